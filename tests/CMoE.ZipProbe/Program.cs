// Usage: CMoE.ZipProbe <model.zip> <rows.json> [--no-register]
//        CMoE.ZipProbe <model.zip> <texts.json> --text
// rows.json holds float[][] rows of WeightedSumTransformer.SampleDimension features. Loads the zip in this fresh
// process, scores the rows through Transform and through a PredictionEngine, and prints one JSON object:
// {"transform":[...],"predict":[...],"inputSchema":[...],"loadSeconds":s}. On failure prints the error to stderr
// and exits with 1.
// With --text, texts.json holds string[] rows of a "Text" column; the zip holds CMoE language-model transformers
// (loaded with LoadCMoEModel, libtorch pinned to one thread) and the probe prints
// {"transform":{"<column>":[...] per float or float-vector output column},"predict":{same for a PredictionEngine
// with Perplexity, LogLikelihood, Embedding},"inputSchema":[...],"loadSeconds":s} (NaN written as "NaN").
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Serialization;
using CMoE.MLNet;
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
    if (args.Contains("--text")) return TextProbe.Run(args[0], args[1]);
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

/// <summary>The --text mode: CMoE language-model transformers.</summary>
internal static class TextProbe
{
    private static readonly JsonSerializerOptions Json = new() { NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };

    public static int Run(string zip, string textsPath)
    {
        TorchSharp.torch.set_num_threads(1);
        var ml = new MLContext(seed: 0);
        var watch = Stopwatch.StartNew();
        var model = ml.LoadCMoEModel(zip, out var inputSchema);
        double loadSeconds = watch.Elapsed.TotalSeconds;
        var texts = JsonSerializer.Deserialize<string[]>(File.ReadAllText(textsPath))!;
        var data = ml.Data.LoadFromEnumerable(texts.Select(t => new TextRow { Text = t }));
        var output = model.Transform(data);
        var transform = new Dictionary<string, object>();
        foreach (var column in output.Schema.Where(c => !c.IsHidden && data.Schema.GetColumnOrNull(c.Name) is null))
        {
            if (column.Type is NumberDataViewType) transform[column.Name] = output.GetColumn<float>(column).ToArray();
            else if (column.Type is VectorDataViewType) transform[column.Name] = output.GetColumn<float[]>(column).ToArray();
        }
        var engine = ml.Model.CreatePredictionEngine<TextRow, TextScores>(model);
        var predictions = texts.Select(t => engine.Predict(new TextRow { Text = t })).ToArray();
        var predict = new Dictionary<string, object>
        {
            ["Perplexity"] = predictions.Select(p => p.Perplexity).ToArray(),
            ["LogLikelihood"] = predictions.Select(p => p.LogLikelihood).ToArray(),
            ["Embedding"] = predictions.Select(p => p.Embedding).ToArray(),
        };
        Console.WriteLine(JsonSerializer.Serialize(new
        {
            transform,
            predict,
            inputSchema = inputSchema?.Select(c => $"{c.Name}:{c.Type}").ToArray(),
            loadSeconds,
        }, Json));
        (model as IDisposable)?.Dispose();
        return 0;
    }

    public sealed class TextRow
    {
        public string Text { get; set; } = "";
    }

    public sealed class TextScores
    {
        public float Perplexity { get; set; }
        public float LogLikelihood { get; set; }
        public float[] Embedding { get; set; } = [];
    }
}
