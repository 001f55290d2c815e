// SpamScoring: spam/ham classification with ML.NET on embeddings of a dense and of a carved (CMoE) LLaMA model,
// beside ML.NET's FeaturizeText baseline. See README.md.
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using CMoE.MLNet;
using CMoE.Samples;
using Microsoft.ML;
using Microsoft.ML.Data;
using TorchSharp;

var options = Args.Parse(args);
torch.set_num_threads(options.Threads);

if (options.Reload is { } reload) return ReloadCheck.Run(reload, options);

string modelFolder = SamplePaths.Find("models/tinyref-llama");
string dataPath = SamplePaths.Find("samples/SpamScoring/data/spam-assassin.tsv");
var ml = new MLContext(seed: 0);
var mails = Mail.Read(dataPath, options.Rows);
var split = ml.Data.TrainTestSplit(ml.Data.LoadFromEnumerable(mails), testFraction: 0.2, seed: 0);
long testRows = split.TestSet.GetRowCount() ?? ml.Data.CreateEnumerable<Mail>(split.TestSet, false).LongCount();
Log(options, $"{mails.Count} mails, {testRows} held out; model {modelFolder}; {options.MaxTokens} tokens per mail; {options.Threads} threads");

var results = new JsonObject();
var totalWatch = Stopwatch.StartNew();

// 1. Baseline: ML.NET's own text featurizer.
Result? dense = null, carved = null;
var baseline = Classify(ml, ml.Transforms.Text.FeaturizeText("Features", nameof(Mail.Text)), "Features", split, "baseline", options, normalize: false);
results["accuracy_baseline"] = baseline.Accuracy;
results["auc_baseline"] = baseline.Auc;
results["rows_per_s_baseline"] = baseline.RowsPerSecond;

// 2. Dense model embeddings.
if (!options.SkipEmbeddings)
{
var scoring = new LanguageModelScoringEstimator.Options { ModelFolder = modelFolder };
Configure(scoring, options);
dense = Classify(ml, ml.Transforms.ScoreWithLanguageModel(scoring), "Embedding", split, "dense", options);
results["accuracy_dense"] = dense.Accuracy;
results["auc_dense"] = dense.Auc;
results["rows_per_s_dense"] = dense.RowsPerSecond;

// 3. Carved model embeddings: CarveMoE calibrated on the training mails themselves.
var carve = new CarveMoEEstimator.Options
{
    ModelFolder = modelFolder, Layout = options.Layout, CalibrationSamples = 8, CalibrationLength = 512, Seed = 0,
};
Configure(carve, options);
carved = Classify(ml, ml.Transforms.CarveMoE(carve), "Embedding", split, "carved", options);
results["accuracy_carved"] = carved.Accuracy;
results["auc_carved"] = carved.Auc;
results["rows_per_s_carved"] = carved.RowsPerSecond;
}
results["layout"] = options.Layout;

// 4-5. Fine-tuned classifiers: the dense model, and the carved model (CarveMoE upstream, then the same trainer).
Result? ftDense = null, ftCarved = null;
if (!options.SkipDenseFineTune)
{
    ftDense = FineTune(ml, null, Classifier(options, modelFolder), split, "fine-tuned dense", options);
    results["accuracy_finetuned_dense"] = ftDense.Accuracy;
    results["auc_finetuned_dense"] = ftDense.Auc;
    results["rows_per_s_finetuned_dense"] = ftDense.RowsPerSecond;
    results["finetune_seconds_dense"] = ftDense.FitSeconds;
}
if (!options.SkipCarvedFineTune)
{
    var carveFt = new CarveMoEEstimator.Options
    {
        ModelFolder = modelFolder, Layout = options.Layout, CalibrationSamples = 8, CalibrationLength = 512, Seed = 0,
        TextColumnName = nameof(Mail.Text), PerplexityColumnName = null, LogLikelihoodColumnName = null, EmbeddingColumnName = "Embedding",
    };
    ftCarved = FineTune(ml, ml.Transforms.CarveMoE(carveFt), Classifier(options, null), split, "fine-tuned carved", options);
    results["accuracy_finetuned_carved"] = ftCarved.Accuracy;
    results["auc_finetuned_carved"] = ftCarved.Auc;
    results["rows_per_s_finetuned_carved"] = ftCarved.RowsPerSecond;
    results["finetune_seconds_carved"] = ftCarved.FitSeconds;
    if (ftDense is not null) results["rows_per_s_ratio_carved_vs_dense"] = Math.Round(ftCarved.RowsPerSecond / ftDense.RowsPerSecond, 2);
}
results["finetune"] = new JsonObject
{
    ["max_tokens"] = options.FtMaxTokens, ["epochs"] = options.FtEpochs, ["lr"] = options.FtLr, ["head_lr"] = options.FtHeadLr ?? 2 * options.FtLr, ["mode"] = options.FtMode.ToString(),
    ["pooling"] = options.FtPooling.ToString(), ["batch"] = options.FtBatch, ["validation_fraction"] = 0.1,
};

// 6. Save the carved pipelines (embeddings, fine-tuned), reload each in a new process, compare predictions.
foreach (var (key, result) in new[] { ("", carved), ("_finetuned_carved", ftCarved) })
{
    if (result is null) continue;
    string dir = Directory.CreateTempSubdirectory("cmoe-spam-").FullName;
    try
    {
        string zip = Path.Combine(dir, "spam-carved.zip");
        ml.Model.Save(result.Model, split.TrainSet.Schema, zip);
        var testMails = ml.Data.CreateEnumerable<Mail>(split.TestSet, reuseRowObject: false).ToArray();
        string textsPath = Path.Combine(dir, "test.json");
        File.WriteAllText(textsPath, JsonSerializer.Serialize(testMails.Select(m => m.Text).ToArray()));
        var expected = Predict(result.Model, ml, testMails.Select(m => m.Text).ToArray());
        var reloaded = ReloadCheck.Spawn(zip, textsPath, options);
        bool identical = reloaded is not null && reloaded.Length == expected.Length && expected.Zip(reloaded).All(p => p.First == p.Second);
        results["reloaded_identical" + key] = identical;
        results["zip_mb" + key] = Math.Round(new FileInfo(zip).Length / 1e6, 1);
        Log(options, $"saved {zip} ({new FileInfo(zip).Length / 1e6:F1} MB){key}; reloaded in a new process: predictions identical = {identical}");
    }
    finally
    {
        Directory.Delete(dir, recursive: true);
    }
}
// reloaded_identical is the fine-tuned carved zip's check when that ran (the issue-17 figure), else the embeddings pipeline's.
if (results["reloaded_identical_finetuned_carved"] is { } ftIdentical)
{
    if (results["reloaded_identical"] is { } embIdentical) results["reloaded_identical_embeddings"] = embIdentical.GetValue<bool>();
    results["reloaded_identical"] = ftIdentical.GetValue<bool>();
}
results["test_rows"] = testRows;
results["max_tokens"] = options.MaxTokens;
results["pooling"] = options.Pooling.ToString();
results["threads"] = options.Threads;
results["seconds_total"] = Math.Round(totalWatch.Elapsed.TotalSeconds, 1);

if (options.Json) Console.WriteLine(results.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
else
{
    Console.WriteLine();
    Console.WriteLine($"{"features",-28} {"accuracy",9} {"AUC",7} {"rows/s",8}");
    foreach (var (name, r) in new[] { ("FeaturizeText (baseline)", baseline), ("dense tinyref embeddings", dense), ($"carved {options.Layout} embeddings", carved),
                 ("fine-tuned dense", ftDense), ($"fine-tuned carved {options.Layout}", ftCarved) })
        if (r is not null) Console.WriteLine($"{name,-28} {r.Accuracy,9:F4} {r.Auc,7:F4} {r.RowsPerSecond,8:F1}");
    Console.WriteLine($"reloaded in a new process, identical predictions: {results["reloaded_identical"]}");
}
return 0;

static void Configure(ScoringOptions o, Args options)
{
    o.TextColumnName = nameof(Mail.Text);
    o.MaxTokens = options.MaxTokens;
    o.BatchSize = 16;
    o.Pooling = options.Pooling;
    o.PerplexityColumnName = null;      // embeddings only: skips the LM head
    o.LogLikelihoodColumnName = null;
    o.EmbeddingColumnName = "Embedding";
}

static Result Classify(MLContext ml, IEstimator<ITransformer> featurizer, string features, DataOperationsCatalog.TrainTestData split, string name, Args options,
    bool normalize = true)
{
    var watch = Stopwatch.StartNew();
    // FeaturizeText's sparse n-gram vectors are already L2-normalized (mean/variance would densify them);
    // the dense embeddings are standardized.
    IEstimator<ITransformer> normalizer = normalize ? ml.Transforms.NormalizeMeanVariance(features) : ml.Transforms.CopyColumns(features + "_", features);
    var pipeline = featurizer
        .AppendCacheCheckpoint(ml) // the features are computed once, not once per trainer pass
        .Append(normalizer)
        .Append(ml.BinaryClassification.Trainers.LbfgsLogisticRegression(labelColumnName: nameof(Mail.Label), featureColumnName: features));
    var model = pipeline.Fit(split.TrainSet);
    double fitSeconds = watch.Elapsed.TotalSeconds;
    watch.Restart();
    var scored = model.Transform(split.TestSet);
    var metrics = ml.BinaryClassification.Evaluate(scored, nameof(Mail.Label));
    double seconds = watch.Elapsed.TotalSeconds;
    long rows = ml.Data.CreateEnumerable<Mail>(split.TestSet, reuseRowObject: true).LongCount();
    var result = new Result(Math.Round(metrics.Accuracy, 4), Math.Round(metrics.AreaUnderRocCurve, 4), Math.Round(rows / seconds, 1), model);
    Log(options, $"{name}: fit {fitSeconds:F1} s; held-out accuracy {result.Accuracy:F4}, AUC {result.Auc:F4}, scoring {result.RowsPerSecond:F1} rows/s");
    return result;
}

static LanguageModelClassifierTrainer.Options Classifier(Args options, string? folder) => new()
{
    ModelFolder = folder, LabelColumnName = nameof(Mail.Label), TextColumnName = nameof(Mail.Text), MaxTokens = options.FtMaxTokens,
    Epochs = options.FtEpochs, LearningRate = options.FtLr, HeadLearningRate = options.FtHeadLr ?? 2 * options.FtLr, Mode = options.FtMode, Pooling = options.FtPooling,
    BatchSize = options.FtBatch, ValidationFraction = 0.1, Patience = 2, ValidationEvery = options.FtValidateEvery, Seed = 0,
    ClassWeighting = options.FtClassWeighting, LoraRank = options.FtRank, LoraAlpha = 2 * options.FtRank,
    Progress = new ProgressLog(),
};

static Result FineTune(MLContext ml, IEstimator<ITransformer>? upstream, LanguageModelClassifierTrainer.Options trainer, DataOperationsCatalog.TrainTestData split,
    string name, Args options)
{
    var watch = Stopwatch.StartNew();
    var classifier = ml.BinaryClassification.Trainers.LanguageModelClassifier(trainer);
    ITransformer model = upstream is null ? classifier.Fit(split.TrainSet) : upstream.Append(classifier).Fit(split.TrainSet);
    double fitSeconds = Math.Round(watch.Elapsed.TotalSeconds, 1);
    var last = model as LanguageModelClassifierTransformer ?? (model as IEnumerable<ITransformer>)?.LastOrDefault() as LanguageModelClassifierTransformer;
    var report = last?.TrainingReport;
    watch.Restart();
    var scored = model.Transform(split.TestSet);
    var metrics = ml.BinaryClassification.Evaluate(scored, nameof(Mail.Label));
    double seconds = watch.Elapsed.TotalSeconds;
    long rows = ml.Data.CreateEnumerable<Mail>(split.TestSet, reuseRowObject: true).LongCount();
    var result = new Result(Math.Round(metrics.Accuracy, 4), Math.Round(metrics.AreaUnderRocCurve, 4), Math.Round(rows / seconds, 1), model, fitSeconds);
    Log(options, $"{name}: fit {fitSeconds:F1} s ({report?.Steps} steps, {report?.TokensPerSecond:F0} training tokens/s, best validation loss {report?.BestValidationLoss:F4} " +
        $"acc {report?.BestValidationAccuracy:F4} at step {report?.BestStep}, early stop {report?.StoppedEarly}); held-out accuracy {result.Accuracy:F4}, AUC {result.Auc:F4}, scoring {result.RowsPerSecond:F1} rows/s");
    return result;
}

static float[] Predict(ITransformer model, MLContext ml, string[] texts)
{
    var data = ml.Data.LoadFromEnumerable(texts.Select(t => new Mail { Text = t }));
    return model.Transform(data).GetColumn<float>("Probability").ToArray();
}

static void Log(Args options, string line)
{
    if (options.Json) Console.Error.WriteLine(line);
    else Console.WriteLine(line);
}

/// <summary>One mail: the label and Subject + "\n" + Body.</summary>
public sealed class Mail
{
    /// <summary>True for spam.</summary>
    public bool Label { get; set; }

    /// <summary>Subject and body.</summary>
    public string Text { get; set; } = "";

    /// <summary>Reads the TSV (Label, Group, Id, Subject, Body), at most <paramref name="limit"/> rows (0 = all).</summary>
    public static List<Mail> Read(string path, int limit)
    {
        var mails = new List<Mail>();
        foreach (string line in File.ReadLines(path).Skip(1))
        {
            var f = line.Split('\t');
            if (f.Length < 5) continue;
            mails.Add(new Mail { Label = f[0] == "spam", Text = f[3] + "\n" + f[4] });
        }
        if (limit > 0)
        {
            var random = new Random(0);
            mails = mails.OrderBy(_ => random.Next()).Take(limit).ToList();
        }
        return mails;
    }
}

/// <summary>Figures of one pipeline.</summary>
internal sealed record Result(double Accuracy, double Auc, double RowsPerSecond, ITransformer Model, double FitSeconds = 0);

/// <summary>Fine-tune progress on stderr every 20 steps and at the end: loss, tokens/s, ETA, validation figures.</summary>
internal sealed class ProgressLog : IProgress<CMoE.Training.ClassifierProgress>
{
    public void Report(CMoE.Training.ClassifierProgress p)
    {
        if (p.Step % 20 != 0 && p.Step != p.Steps) return;
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"  step {p.Step}/{p.Steps} loss {p.Loss:F4} {p.TokensPerSecond:F0} tok/s ETA {(int)p.Eta.TotalHours}:{p.Eta:mm\\:ss} val loss {p.ValidationLoss:F4} acc {p.ValidationAccuracy:F4}"));
    }
}

/// <summary>Command-line options.</summary>
internal sealed record Args(int MaxTokens, string Layout, int Threads, bool Json, int Rows, EmbeddingPooling Pooling, string[]? Reload,
    bool SkipEmbeddings, bool SkipDenseFineTune, bool SkipCarvedFineTune, int FtMaxTokens, int FtEpochs, double FtLr, CMoE.Training.FineTuneMode FtMode,
    CMoE.Training.ClassifierPooling FtPooling, int FtBatch, int FtValidateEvery, bool FtClassWeighting, int FtRank, double? FtHeadLr)
{
    public static Args Parse(string[] args)
    {
        string? Value(string name) => Array.IndexOf(args, name) is var i and >= 0 && i + 1 < args.Length ? args[i + 1] : null;
        int reload = Array.IndexOf(args, "--reload");
        return new Args(
            int.Parse(Value("--max-tokens") ?? "96", CultureInfo.InvariantCulture),
            Value("--layout") ?? "S2A2E16",
            int.Parse(Value("--threads") ?? "2", CultureInfo.InvariantCulture),
            args.Contains("--json"),
            int.Parse(Value("--rows") ?? "0", CultureInfo.InvariantCulture),
            Enum.Parse<EmbeddingPooling>(Value("--pooling") ?? nameof(EmbeddingPooling.MeanMax), ignoreCase: true),
            reload >= 0 && reload + 2 < args.Length ? [args[reload + 1], args[reload + 2]] : null,
            args.Contains("--skip-embeddings"), args.Contains("--skip-dense-finetune"), args.Contains("--skip-carved-finetune"),
            int.Parse(Value("--ft-max-tokens") ?? "96", CultureInfo.InvariantCulture),
            int.Parse(Value("--ft-epochs") ?? "2", CultureInfo.InvariantCulture),
            double.Parse(Value("--ft-lr") ?? "1e-3", CultureInfo.InvariantCulture),
            Enum.Parse<CMoE.Training.FineTuneMode>(Value("--ft-mode") ?? "Lora", ignoreCase: true),
            Enum.Parse<CMoE.Training.ClassifierPooling>(Value("--ft-pooling") ?? "Mean", ignoreCase: true),
            int.Parse(Value("--ft-batch") ?? "16", CultureInfo.InvariantCulture),
            int.Parse(Value("--ft-validate-every") ?? "0", CultureInfo.InvariantCulture),
            args.Contains("--ft-class-weighting"),
            int.Parse(Value("--ft-rank") ?? "8", CultureInfo.InvariantCulture),
            Value("--ft-head-lr") is { } headLr ? double.Parse(headLr, CultureInfo.InvariantCulture) : null);
    }
}

/// <summary>The new-process half of the round trip: load the zip, predict the texts, print the probabilities.</summary>
internal static class ReloadCheck
{
    public static int Run(string[] reload, Args options)
    {
        var ml = new MLContext(seed: 0);
        var model = ml.LoadCMoEModel(reload[0], out _);
        var texts = JsonSerializer.Deserialize<string[]>(File.ReadAllText(reload[1]))!;
        var data = ml.Data.LoadFromEnumerable(texts.Select(t => new Mail { Text = t }));
        var probabilities = model.Transform(data).GetColumn<float>("Probability").ToArray();
        Console.WriteLine(JsonSerializer.Serialize(probabilities));
        return 0;
    }

    /// <summary>Runs this program again with --reload and returns its probabilities (null on failure).</summary>
    public static float[]? Spawn(string zip, string textsPath, Args options)
    {
        string self = Environment.ProcessPath!;
        var start = new ProcessStartInfo(self) { RedirectStandardOutput = true, RedirectStandardError = true };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") start.ArgumentList.Add(typeof(ReloadCheck).Assembly.Location);
        foreach (string a in new[] { "--reload", zip, textsPath, "--threads", options.Threads.ToString(CultureInfo.InvariantCulture) })
            start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            Console.Error.WriteLine($"reload process failed: {stderr.Result}");
            return null;
        }
        return JsonSerializer.Deserialize<float[]>(stdout.Trim());
    }
}
