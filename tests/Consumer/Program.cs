// A package user's app: carve the embedded model with CarveMoE, score, save a zip, reload it, score again.
// usage: Consumer <tinyref-llama folder> <text file>; exit 0 when the reloaded model scores identically.
using CMoE.MLNet;
using Microsoft.ML;
using Microsoft.ML.TorchSharp;

string modelFolder = args[0];
string text = File.ReadAllText(args[1]);
var rows = Enumerable.Range(0, 12).Select(i => new Row { Text = text.Substring(i * 1500, 1500) }).ToArray();

var ml = new MLContext(seed: 0);
var data = ml.Data.LoadFromEnumerable(rows);

// Microsoft.ML.TorchSharp in the same process: its estimator is built against the TorchSharp both packages share
// (fitting it downloads RoBERTa weights, which a machine without network cannot do, so it is only constructed).
var textClassifier = ml.MulticlassClassification.Trainers.TextClassification(labelColumnName: "Label", sentence1ColumnName: "Text");
Console.WriteLine($"Microsoft.ML.TorchSharp estimator: {textClassifier.GetType().Name}");

using var carved = ml.Transforms.CarveMoE(modelFolder, textColumnName: "Text", layout: "S2A2E16",
    calibrationSamples: 4, calibrationLength: 256, maxTokens: 256).Fit(data);
float[] before = ml.Data.CreateEnumerable<Scores>(carved.Transform(data), reuseRowObject: false).Select(s => s.Perplexity).ToArray();

string zip = Path.Combine(Path.GetTempPath(), $"consumer-{Environment.ProcessId}.zip");
ml.Model.Save(carved, data.Schema, zip);
var fresh = new MLContext(seed: 0);
var reloaded = fresh.LoadCMoEModel(zip, out _);
float[] after = fresh.Data.CreateEnumerable<Scores>(reloaded.Transform(data), reuseRowObject: false).Select(s => s.Perplexity).ToArray();
(reloaded as IDisposable)?.Dispose();
long zipBytes = new FileInfo(zip).Length;
File.Delete(zip);

bool identical = before.Length == rows.Length && before.SequenceEqual(after) && before.All(float.IsFinite);
Console.WriteLine($"carved S2A2E16; {rows.Length} rows scored, mean perplexity {before.Average():F2}; zip {zipBytes / 1e6:F1} MB; reloaded identical: {identical}");
return identical ? 0 : 1;

/// <summary>An input row.</summary>
public sealed class Row
{
    /// <summary>The text.</summary>
    public string Text { get; set; } = "";

    /// <summary>A label column for Microsoft.ML.TorchSharp's estimator (unused by the carve).</summary>
    public uint Label { get; set; }
}

/// <summary>The score columns read back.</summary>
public sealed class Scores
{
    /// <summary>The row's perplexity.</summary>
    public float Perplexity { get; set; }
}
