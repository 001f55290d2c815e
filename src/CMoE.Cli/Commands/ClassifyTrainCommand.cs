using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using CMoE.MLNet;
using CMoE.Training;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace CMoE.Cli.Commands;

/// <summary><c>cmoe classify-train</c>: fine-tunes a dense or carved model folder into a text classifier saved as an ML.NET model zip.</summary>
internal sealed class ClassifyTrainCommand : ICommand
{
    private readonly Option<string> _model = CliOptions.Required("--model", "folder", "a dense Hugging Face LLaMA folder or a carved folder");
    private readonly Option<string> _data = CliOptions.Required("--data", "tsv", "tab-separated training data with a header row");
    private readonly Option<string> _textColumn = new("--text-column") { Description = "the text column: a header name or a 0-based index", HelpName = "name|index", DefaultValueFactory = _ => "Text" };
    private readonly Option<string> _labelColumn = new("--label-column") { Description = "the label column (any values; two or more classes): a header name or a 0-based index", HelpName = "name|index", DefaultValueFactory = _ => "Label" };
    private readonly Option<string> _out = CliOptions.Required("--out", "zip", "the model zip to write");
    private readonly Option<string?> _layout = CliOptions.Optional("--layout", "S2A2E16", "carve the dense model first (CarveMoE on 8 x 512 tokens of the training texts), then fine-tune the carved model");
    private readonly Option<int> _epochs = CliOptions.Int("--epochs", 1, "passes over the training rows", min: 1);
    private readonly Option<double> _lr = CliOptions.Double("--lr", 1e-3, "peak learning rate of the LoRA adapters (full mode: of the weights); the head uses twice it", min: 0);
    private readonly Option<int> _maxTokens = CliOptions.Int("--max-tokens", 64, "tokens per row, BOS included", min: 2);
    private readonly Option<int> _batch = CliOptions.Int("--batch", 16, "rows per optimiser step", min: 1);
    private readonly Option<int> _maxSteps = CliOptions.Int("--max-steps", 0, "stop after this many steps (0: all epochs)", min: 0);
    private readonly Option<FineTuneMode> _mode = CliOptions.Choice("--mode", FineTuneMode.Lora, "lora: adapters on attention and FFN/experts; full: the matrices themselves");
    private readonly Option<ClassifierPooling> _pooling = CliOptions.Choice("--pooling", ClassifierPooling.Mean, "the head reads the mean of the real tokens' states or the last real token's");
    private readonly Option<int> _rank = CliOptions.Int("--lora-rank", 8, "LoRA rank (alpha = 2 x rank)", min: 1);
    private readonly Option<double> _validation = CliOptions.Double("--validation-fraction", 0.1, "rows held out for early stopping (0: none)", min: 0);
    private readonly Option<int> _patience = CliOptions.Int("--patience", 2, "validation passes without improvement before stopping (0: never early)", min: 0);
    private readonly Option<int> _validateEvery = CliOptions.Int("--validate-every", 0, "steps between validation passes (0: once per epoch)", min: 0);
    private readonly Option<bool> _classWeighting = CliOptions.Flag("--class-weighting", "weight each class's loss by its inverse frequency (imbalanced labels)");
    private readonly Option<int> _seed = CliOptions.Int("--seed", 0, "seed of the head, LoRA init, validation split, row order, dropout");

    public string Name => "classify-train";

    public string Summary => "fine-tune a dense or carved model into a text classifier (ML.NET model zip)";

    public string Details => """
        Reads a tab-separated file with a header row, maps the label column's values to classes (ML.NET
        MapValueToKey: classes in order of first appearance) and fine-tunes the model end to end as a classifier:
        a linear head on the pooled final hidden state, LoRA (or full) on the backbone; for carved models the router
        scale and balancing bias train as in 'cmoe finetune'. With --layout the dense model is carved first. The zip
        holds the classifier and a key-to-value map: 'cmoe classify' (or mlContext.Model.Load) writes PredictedLabel
        (the label's own values) and Score (one probability per class). Training runs on --device; the zip is CPU fp32.
        The zip is written to a temporary file and moved into place when complete.
        """;

    public IEnumerable<Option> Options =>
        [_model, _data, _textColumn, _labelColumn, _out, _layout, _epochs, _lr, _maxTokens, _batch, _maxSteps, _mode, _pooling, _rank, _validation,
         _patience, _validateEvery, _classWeighting, _seed, .. CommonOptions.Runtime, CommonOptions.JsonOption];

    public int Run(ParseResult line, CancellationToken cancel)
    {
        string modelDir = line.GetValue(_model)!;
        string dataPath = line.GetValue(_data)!;
        string output = line.GetValue(_out)!;
        string? layout = line.GetValue(_layout);
        bool json = line.GetValue(CommonOptions.JsonOption);
        var device = CommonOptions.Device(line);
        int threads = CommonOptions.Threads(line);
        if (!Directory.Exists(modelDir)) throw new DirectoryNotFoundException($"Model folder '{modelDir}' does not exist; pass a Hugging Face LLaMA folder or a carved folder.");
        if (layout is not null) CommonOptions.DenseConfig(modelDir, "carve");
        if (!File.Exists(dataPath)) throw new FileNotFoundException($"Training data '{dataPath}' does not exist.", dataPath);
        string? outDir = Path.GetDirectoryName(Path.GetFullPath(output));
        if (outDir is not null && !Directory.Exists(outDir)) throw new DirectoryNotFoundException($"The folder of --out '{output}' does not exist; create it first.");
        var header = Header(dataPath);
        string text = Column(header, line.GetValue(_textColumn)!, "--text-column", dataPath);
        string label = Column(header, line.GetValue(_labelColumn)!, "--label-column", dataPath);
        if (text == label) throw new UsageException($"--text-column and --label-column both name '{text}'; give two different columns.");

        var ml = new MLContext(seed: 0);
        var data = ml.Data.LoadFromTextFile(dataPath, new TextLoader.Options
        {
            Separators = ['\t'], HasHeader = true, AllowQuoting = false, TrimWhitespace = false,
            Columns = header.Select((name, i) => new TextLoader.Column(name, DataKind.String, i)).ToArray(),
        });
        var labels = data.GetColumn<string>(label).ToList();
        int classes = labels.Where(l => !string.IsNullOrEmpty(l)).Distinct().Count();
        if (classes < 2) throw new ArgumentException($"Column '{label}' of '{dataPath}' has {classes} distinct value(s); a classifier needs at least 2 classes.");

        var options = new LanguageModelClassifierTrainer.Options
        {
            ModelFolder = layout is null ? modelDir : null, TextColumnName = text, LabelColumnName = "cmoe.LabelKey", PredictedLabelColumnName = "cmoe.PredictedKey",
            MaxTokens = line.GetValue(_maxTokens), Epochs = line.GetValue(_epochs), LearningRate = line.GetValue(_lr), HeadLearningRate = 2 * line.GetValue(_lr),
            BatchSize = line.GetValue(_batch), MaxSteps = line.GetValue(_maxSteps), Mode = line.GetValue(_mode), Pooling = line.GetValue(_pooling),
            LoraRank = line.GetValue(_rank), LoraAlpha = 2 * line.GetValue(_rank), ValidationFraction = line.GetValue(_validation),
            Patience = line.GetValue(_patience), ValidationEvery = line.GetValue(_validateEvery), ClassWeighting = line.GetValue(_classWeighting),
            Seed = line.GetValue(_seed), TrainingDevice = device, Cancellation = cancel,
        };
        var keyMap = ml.Transforms.Conversion.MapValueToKey("cmoe.LabelKey", label).Fit(data);
        var keyed = keyMap.Transform(data);
        ITransformer? carved = null;
        LanguageModelClassifierTransformer classifier;
        using (var bar = Terminal.Progress("classify-train"))
        {
            options.Progress = new Relay(p => bar.Report((double)p.Step / p.Steps, string.Create(CultureInfo.InvariantCulture,
                $"step {p.Step}/{p.Steps} loss {p.Loss:F3} {p.TokensPerSecond:F0} tok/s ETA {(int)p.Eta.TotalHours}:{p.Eta:mm\\:ss} val acc {p.ValidationAccuracy:F3}")));
            var trainer = ml.MulticlassClassification.Trainers.LanguageModelClassifier(options);
            try
            {
                if (layout is not null)
                {
                    carved = ml.Transforms.CarveMoE(new CarveMoEEstimator.Options
                    {
                        ModelFolder = modelDir, Layout = layout, TextColumnName = text, CalibrationSamples = 8, CalibrationLength = 512, Seed = options.Seed,
                        MaxTokens = options.MaxTokens,
                    }).Fit(keyed);
                    keyed = carved.Transform(keyed);
                }
                classifier = trainer.Fit(keyed);
            }
            finally
            {
                (carved as IDisposable)?.Dispose();
            }
        }
        var toValue = ml.Transforms.Conversion.MapKeyToValue("PredictedLabel", "cmoe.PredictedKey").Fit(classifier.Transform(keyed));
        var chain = new TransformerChain<ITransformer>(classifier, toValue);
        try
        {
            string tmp = output + ".partial";
            try
            {
                ml.Model.Save(chain, data.Schema, tmp);
            }
            catch
            {
                File.Delete(tmp);
                throw;
            }
            File.Move(tmp, output, overwrite: true);
            var report = classifier.TrainingReport!;
            if (json)
                Terminal.WriteJson(new JsonObject
                {
                    ["seconds"] = Math.Round(report.Seconds, 3),
                    ["tokens_per_second"] = Math.Round(report.TokensPerSecond, 2),
                    ["steps"] = report.Steps,
                    ["best_step"] = report.BestStep,
                    ["stopped_early"] = report.StoppedEarly,
                    ["final_loss"] = report.FinalLoss,
                    ["validation_loss"] = double.IsNaN(report.BestValidationLoss) ? null : report.BestValidationLoss,
                    ["validation_accuracy"] = double.IsNaN(report.BestValidationAccuracy) ? null : report.BestValidationAccuracy,
                    ["classes"] = classes,
                    ["rows"] = labels.Count,
                    ["layout"] = classifier.Layout,
                    ["device"] = device.ToString(),
                    ["threads"] = threads,
                    ["out"] = Path.GetFullPath(output),
                });
            else
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"trained a {classes}-class classifier ({(classifier.IsCarved ? "carved " + classifier.Layout : "dense")}) in {report.Steps} steps, {report.Seconds:F1} s, {report.TokensPerSecond:F0} tok/s; validation accuracy {report.BestValidationAccuracy:F4} -> {output}"));
        }
        finally
        {
            classifier.Dispose();
        }
        return 0;
    }

    /// <summary>The header row of a TSV (throws naming the file when it is empty).</summary>
    internal static string[] Header(string path)
    {
        string[] header = (File.ReadLines(path).FirstOrDefault() ?? "").Split('\t');
        if (header.All(string.IsNullOrEmpty))
            throw new ArgumentException($"'{path}' is empty; it needs a header row of tab-separated column names.");
        return header;
    }

    /// <summary>A column given by header name or 0-based index.</summary>
    internal static string Column(string[] header, string given, string option, string path)
    {
        if (header.Contains(given)) return given;
        if (int.TryParse(given, NumberStyles.None, CultureInfo.InvariantCulture, out int index) && index < header.Length) return header[index];
        throw new ArgumentException($"{option} '{given}' is not a column of '{path}' (columns: {string.Join(", ", header)}); pass a header name or a 0-based index.");
    }

    private sealed class Relay(Action<ClassifierProgress> report) : IProgress<ClassifierProgress>
    {
        public void Report(ClassifierProgress value) => report(value);
    }
}
