// QuickStart: the README's main job on the embedded default model (models/tinyref-llama).
//   1. carve it into a Mixture-of-Experts (S2A2E16) with mlContext.Transforms.CarveMoE, calibrated on a small vendored text;
//   2. compare perplexity dense vs carved on a vendored held-out text;
//   3. save the carved model as an ML.NET model zip, reload it, score a few texts.
// Runs in a few minutes on 2 CPU cores; needs nothing outside the repository.
//   dotnet run -c Release --project samples/QuickStart -- [--layout S2A2E16] [--threads 2]
using System.Diagnostics;
using System.Globalization;
using CMoE.MLNet;
using CMoE.Samples;
using Microsoft.ML;
using Microsoft.ML.Data;
using TorchSharp;

string? Value(string name) => Array.IndexOf(args, name) is var i and >= 0 && i + 1 < args.Length ? args[i + 1] : null;
string layout = Value("--layout") ?? "S2A2E16";
torch.set_num_threads(int.Parse(Value("--threads") ?? "2", CultureInfo.InvariantCulture));

string modelFolder = SamplePaths.Find("models/tinyref-llama");
string calibrationText = File.ReadAllText(SamplePaths.Find("samples/data/sotu_train_sample.txt"));
string evalText = File.ReadAllText(SamplePaths.Find("samples/data/sotu_val_sample.txt"));
var ml = new MLContext(seed: 0);

// Calibration data: one row per paragraph-sized chunk of the vendored text (the estimator concatenates the rows).
var calibration = ml.Data.LoadFromEnumerable(Chunks(calibrationText, 2000).Select(t => new TextRow { Text = t }));
// Evaluation data: the held-out text cut into rows of ~2000 characters, each scored up to 512 tokens.
var evaluation = ml.Data.LoadFromEnumerable(Chunks(evalText, 2000).Select(t => new TextRow { Text = t }));

Console.WriteLine($"model {modelFolder}; carving {layout} on 8 x 512 calibration tokens...");
var watch = Stopwatch.StartNew();
using var carved = ml.Transforms.CarveMoE(modelFolder, textColumnName: "Text", layout: layout,
    calibrationSamples: 8, calibrationLength: 512, maxTokens: 512).Fit(calibration);
Console.WriteLine($"carved in {watch.Elapsed.TotalSeconds:F1} s");

using var dense = ml.Transforms.ScoreWithLanguageModel(modelFolder, "Text", maxTokens: 512).Fit(evaluation);
double densePpl = CorpusPerplexity(dense, evaluation, out double denseSeconds);
double carvedPpl = CorpusPerplexity(carved, evaluation, out double carvedSeconds);
Console.WriteLine($"held-out perplexity: dense {densePpl:F2} ({denseSeconds:F1} s), carved {layout} {carvedPpl:F2} ({carvedSeconds:F1} s)");

string zip = Path.Combine(Path.GetTempPath(), $"quickstart-{layout}.zip");
ml.Model.Save(carved, evaluation.Schema, zip);
Console.WriteLine($"saved {zip} ({new FileInfo(zip).Length / 1e6:F1} MB)");

var fresh = new MLContext(seed: 0);
var reloaded = fresh.LoadCMoEModel(zip, out _);
string[] samples =
[
    "The state of the union is strong, and our economy is growing.",
    "We will defend our nation and support our allies.",
    "Colorless green ideas sleep furiously.",
];
var engine = fresh.Model.CreatePredictionEngine<TextRow, Scores>(reloaded);
foreach (string text in samples)
{
    var s = engine.Predict(new TextRow { Text = text });
    Console.WriteLine($"  perplexity {s.Perplexity,8:F2}  log-likelihood {s.LogLikelihood,8:F2}  embedding[{s.Embedding.Length}]  \"{text}\"");
}
double reloadedPpl = CorpusPerplexity(reloaded, evaluation, out _);
Console.WriteLine($"reloaded model's held-out perplexity {reloadedPpl:F2} (identical: {reloadedPpl == carvedPpl})");
(reloaded as IDisposable)?.Dispose();
File.Delete(zip);
return reloadedPpl == carvedPpl ? 0 : 1;

// Token-weighted perplexity over all rows: exp(-sum LogLikelihood / sum predicted tokens), where a row's predicted
// tokens = LogLikelihood / -log(Perplexity).
static double CorpusPerplexity(ITransformer model, IDataView data, out double seconds)
{
    var w = Stopwatch.StartNew();
    var scored = model.Transform(data);
    var ll = scored.GetColumn<float>("LogLikelihood").ToArray();
    var ppl = scored.GetColumn<float>("Perplexity").ToArray();
    seconds = w.Elapsed.TotalSeconds;
    double nll = 0, tokens = 0;
    for (int i = 0; i < ll.Length; i++)
    {
        if (float.IsNaN(ppl[i])) continue;
        nll -= ll[i];
        tokens += Math.Round(-ll[i] / Math.Log(ppl[i]));
    }
    return Math.Exp(nll / tokens);
}

static IEnumerable<string> Chunks(string text, int size)
{
    for (int start = 0; start < text.Length; start += size)
        yield return text.Substring(start, Math.Min(size, text.Length - start));
}

/// <summary>An input row.</summary>
public sealed class TextRow
{
    /// <summary>The text.</summary>
    public string Text { get; set; } = "";
}

/// <summary>The scores of a row.</summary>
public sealed class Scores
{
    /// <summary>exp(-LogLikelihood / predicted tokens).</summary>
    public float Perplexity { get; set; }

    /// <summary>Sum of log p(token | prefix), nats.</summary>
    public float LogLikelihood { get; set; }

    /// <summary>Mean-pooled final hidden state.</summary>
    public float[] Embedding { get; set; } = [];
}
