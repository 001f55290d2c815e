using CMoE.MLNet;
using CMoE.Training;
using Microsoft.ML;
using Microsoft.ML.Data;
using Xunit.Abstractions;

namespace CMoE.Tests.MLNet;

/// <summary>
/// Workout tests of the fine-tuned language-model classifier (issue 17) on the embedded tinyref model: a toy task that a
/// keyword separates is learnt to high accuracy; fit, save, reload in a new MLContext, identical predictions (dense and
/// carved upstream, binary and multiclass); PredictionEngine; bad options fail naming the fix. Rows are at most 16 tokens
/// and training a few dozen steps, one thread.
/// </summary>
public sealed class LanguageModelClassifierTests : IDisposable
{
    private readonly ITestOutputHelper _output;
    private readonly string _dir = Directory.CreateTempSubdirectory("cmoe-cls-").FullName;

    public LanguageModelClassifierTests(ITestOutputHelper output)
    {
        TorchTestSetup.Pin();
        _output = output;
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string Model => TestPaths.EmbeddedModel;

    private static readonly string[] Subjects = ["the meeting", "our budget", "the weather", "a new report", "the garden", "my order", "the train", "your account"];
    private static readonly string[] Verbs = ["is on", "was moved to", "looks fine for", "needs review by", "starts", "ends"];
    private static readonly string[] Days = ["monday", "friday", "the weekend", "next week", "today", "tomorrow"];

    /// <summary>Rows "subject verb day" with a fixed seed; spam rows end with "... win free money now".</summary>
    private static List<Row> Toy(int count, int seed)
    {
        var rng = new Random(seed);
        var rows = new List<Row>();
        for (int i = 0; i < count; i++)
        {
            bool spam = i % 2 == 0;
            string text = $"{Subjects[rng.Next(Subjects.Length)]} {Verbs[rng.Next(Verbs.Length)]} {Days[rng.Next(Days.Length)]}";
            rows.Add(new Row { Text = spam ? text + ", win free money now" : text + ", see you there", Label = spam, Kind = spam ? "spam" : i % 4 == 1 ? "work" : "home" });
        }
        return rows;
    }

    private static LanguageModelClassifierTrainer.Options Fast(string? folder) => new()
    {
        ModelFolder = folder, MaxTokens = 16, BatchSize = 8, Epochs = 3, LearningRate = 3e-3, HeadLearningRate = 1e-2,
        ValidationFraction = 0, LoraRank = 4, LoraAlpha = 8, Seed = 1,
    };

    [Fact]
    public void DenseClassifierLearnsKeywordTaskAndReloadsIdentically()
    {
        var ml = new MLContext(seed: 0);
        var train = ml.Data.LoadFromEnumerable(Toy(48, 1));
        var test = ml.Data.LoadFromEnumerable(Toy(24, 2));
        var options = Fast(Model);
        var steps = new List<ClassifierProgress>();
        options.Progress = new SyncProgress(steps.Add);
        var model = ml.BinaryClassification.Trainers.LanguageModelClassifier(options).Fit(train);
        Assert.Equal(18, steps.Count);                                                   // 3 epochs x 6 batches
        Assert.All(steps, p => Assert.True(p.TokensPerSecond > 0));
        var metrics = ml.BinaryClassification.Evaluate(model.Transform(test));
        _output.WriteLine($"accuracy {metrics.Accuracy:F4}, AUC {metrics.AreaUnderRocCurve:F4}, {model.TrainingReport!.Seconds:F1} s, {model.TrainingReport.TokensPerSecond:F0} tok/s");
        Assert.True(metrics.Accuracy >= 0.9, $"accuracy {metrics.Accuracy}");

        string zip = Path.Combine(_dir, "dense-classifier.zip");
        ml.Model.Save(model, train.Schema, zip);
        var expected = model.Transform(test).GetColumn<float>("Probability").ToArray();
        var ml2 = new MLContext(seed: 5);
        var loaded = ml2.LoadCMoEModel(zip, out _);
        var actual = loaded.Transform(ml2.Data.LoadFromEnumerable(Toy(24, 2))).GetColumn<float>("Probability").ToArray();
        Assert.Equal(expected, actual);

        var engine = ml2.Model.CreatePredictionEngine<Row, BinaryPrediction>(loaded);
        var one = engine.Predict(Toy(24, 2)[0]);
        Assert.Equal(expected[0], one.Probability, 1e-5);
        Assert.Equal(one.Probability > 0.5f, one.PredictedLabel);
        (loaded as IDisposable)?.Dispose();
        model.Dispose();
    }

    [Fact]
    public void CarvedUpstreamMulticlassSavesAndReloadsIdentically()
    {
        var ml = new MLContext(seed: 0);
        var train = ml.Data.LoadFromEnumerable(Toy(32, 3));
        var carve = new CarveMoEEstimator.Options { ModelFolder = Model, Layout = "S1A1E4", CalibrationSamples = 2, CalibrationLength = 32, MaxTokens = 16 };
        var options = Fast(null);
        options.LabelColumnName = "KindKey";
        options.MaxSteps = 3;
        var pipeline = ml.Transforms.Conversion.MapValueToKey("KindKey", nameof(Row.Kind))
            .Append(ml.Transforms.CarveMoE(carve))
            .Append(ml.MulticlassClassification.Trainers.LanguageModelClassifier(options))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedKind", "PredictedLabel"));
        var model = pipeline.Fit(train);
        var classifier = model.OfType<LanguageModelClassifierTransformer>().Single();
        Assert.True(classifier.IsCarved);
        Assert.Equal(3, classifier.Classes);
        Assert.Equal(3, classifier.TrainingReport!.Steps);

        var test = ml.Data.LoadFromEnumerable(Toy(12, 4));
        var scored = model.Transform(test);
        var scores = scored.GetColumn<float[]>("Score").ToArray();
        var kinds = scored.GetColumn<string>("PredictedKind").ToArray();
        Assert.All(scores, s => Assert.Equal(1.0, s.Sum(), 1e-5));
        Assert.All(kinds, k => Assert.Contains(k, new[] { "spam", "work", "home" }));
        var metrics = ml.MulticlassClassification.Evaluate(scored, labelColumnName: "KindKey");
        Assert.InRange(metrics.MacroAccuracy, 0, 1);

        string zip = Path.Combine(_dir, "carved-classifier.zip");
        ml.Model.Save(model, train.Schema, zip);
        var ml2 = new MLContext(seed: 9);
        var loaded = ml2.LoadCMoEModel(zip, out _);
        var again = loaded.Transform(ml2.Data.LoadFromEnumerable(Toy(12, 4)));
        Assert.Equal(scores, again.GetColumn<float[]>("Score").ToArray());
        Assert.Equal(kinds, again.GetColumn<string>("PredictedKind").ToArray());
        (loaded as IDisposable)?.Dispose();
        foreach (var t in model.OfType<IDisposable>()) t.Dispose();
    }

    [Fact]
    public void BadOptionsFailWithClearMessages()
    {
        var ml = new MLContext(seed: 0);
        var data = ml.Data.LoadFromEnumerable(Toy(8, 1));
        var bad = Fast(Model);
        bad.MaxTokens = 1;
        Assert.Contains("MaxTokens", Assert.Throws<ArgumentException>(() => ml.BinaryClassification.Trainers.LanguageModelClassifier(bad)).Message);
        bad = Fast(Model);
        bad.Epochs = 0;
        Assert.Contains("Epochs", Assert.Throws<ArgumentException>(() => ml.BinaryClassification.Trainers.LanguageModelClassifier(bad)).Message);
        bad = Fast(Model);
        bad.ValidationFraction = 1.5;
        Assert.Contains("Validation fraction", Assert.Throws<ArgumentException>(() => ml.BinaryClassification.Trainers.LanguageModelClassifier(bad)).Message);
        bad = Fast(Path.Combine(_dir, "missing"));
        Assert.Contains("not found", Assert.Throws<DirectoryNotFoundException>(() => ml.BinaryClassification.Trainers.LanguageModelClassifier(bad)).Message);

        var noModel = ml.BinaryClassification.Trainers.LanguageModelClassifier(Fast(null));
        Assert.Contains("CarveMoE", Assert.Throws<InvalidOperationException>(() => noModel.Fit(data)).Message);
        var wrongLabel = Fast(Model);
        wrongLabel.LabelColumnName = nameof(Row.Kind);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => ml.BinaryClassification.Trainers.LanguageModelClassifier(wrongLabel).Fit(data));
        Assert.Contains("Boolean", e.Message);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => ml.MulticlassClassification.Trainers.LanguageModelClassifier(wrongLabel).Fit(data));
        Assert.Contains("MapValueToKey", e.Message);
        var missing = Fast(Model);
        missing.TextColumnName = "Body";
        Assert.Contains("'Body' not found", Assert.Throws<ArgumentOutOfRangeException>(() => ml.BinaryClassification.Trainers.LanguageModelClassifier(missing).Fit(data)).Message);
    }

    public sealed class Row
    {
        public string Text { get; set; } = "";
        public bool Label { get; set; }
        public string Kind { get; set; } = "";
    }

    public sealed class BinaryPrediction
    {
        public bool PredictedLabel { get; set; }
        public float Probability { get; set; }
        public float Score { get; set; }
    }

    /// <summary>Reports on the calling thread (Progress&lt;T&gt; posts to the thread pool).</summary>
    private sealed class SyncProgress(Action<ClassifierProgress> report) : IProgress<ClassifierProgress>
    {
        public void Report(ClassifierProgress value) => report(value);
    }
}
