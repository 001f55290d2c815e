// Usage: CMoE.ZipProbe <model.zip> <rows.json> [--no-register]
// rows.json holds float[][] rows of WeightedSumTransformer.SampleDimension features. Loads the zip in this fresh
// process, scores the rows through Transform and through a PredictionEngine, and prints one JSON object:
// {"transform":[...],"predict":[...],"inputSchema":[...],"loadSeconds":s}. On failure prints the error to stderr
// and exits with 1.
using System.Diagnostics;
using System.Text.Json;
using CMoE.MLNet.Persistence;
using CMoE.Tests.Persistence;
using Microsoft.ML;
using Microsoft.ML.Data;

if (args.Length < 2)
{
    Console.Error.WriteLine("usage: CMoE.ZipProbe <model.zip> <rows.json> [--no-register]");
    return 2;
}
try
{
    var ml = new MLContext(seed: 0);
    if (!args.Contains("--no-register")) MlNetBridge.RegisterLoader<WeightedSumTransformer>(ml);
    var watch = Stopwatch.StartNew();
    var model = ml.Model.Load(args[0], out var inputSchema);
    double loadSeconds = watch.Elapsed.TotalSeconds;

    var rows = JsonSerializer.Deserialize<float[][]>(File.ReadAllText(args[1]))!;
    var data = ml.Data.LoadFromEnumerable(rows.Select(r => new WeightedSumInput { Features = r }));
    var transformed = model.Transform(data).GetColumn<float>("Score").ToArray();
    var engine = ml.Model.CreatePredictionEngine<WeightedSumInput, WeightedSumOutput>(model);
    var predicted = rows.Select(r => engine.Predict(new WeightedSumInput { Features = r }).Score).ToArray();

    Console.WriteLine(JsonSerializer.Serialize(new
    {
        transform = transformed,
        predict = predicted,
        inputSchema = inputSchema?.Select(c => $"{c.Name}:{c.Type}").ToArray(),
        loadSeconds,
    }));
    return 0;
}
catch (Exception e)
{
    Console.Error.WriteLine(e.ToString());
    return 1;
}
