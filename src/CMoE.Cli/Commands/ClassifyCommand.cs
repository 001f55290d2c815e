using System.CommandLine;
using System.Text;
using CMoE.MLNet;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace CMoE.Cli.Commands;

/// <summary><c>cmoe classify</c>: predicts the rows of a TSV with a classifier zip written by <c>cmoe classify-train</c>.</summary>
internal sealed class ClassifyCommand : ICommand
{
    private readonly Option<string> _model = CliOptions.Required("--model", "zip", "a classifier zip written by 'cmoe classify-train' (or any zip holding a LanguageModelClassifier)");
    private readonly Option<string> _data = CliOptions.Required("--data", "tsv", "tab-separated rows with a header row");
    private readonly Option<string?> _textColumn = CliOptions.Optional("--text-column", "name|index", "the text column (default: the one the classifier was trained on)");
    private readonly Option<string> _out = CliOptions.Required("--out", "tsv", "the predictions TSV to write");

    public string Name => "classify";

    public string Summary => "predict a TSV's rows with a classifier zip (PredictedLabel, Score)";

    public string Details => """
        Writes every input column plus PredictedLabel (the training labels' values) and Score (one probability per
        class, separated by spaces; binary classifiers saved from ML.NET write Score, Probability and
        PredictedLabel). The output is written to a temporary file and moved into place when complete.
        """;

    public IEnumerable<Option> Options => [_model, _data, _textColumn, _out, .. CommonOptions.Runtime];

    public int Run(ParseResult line, CancellationToken cancel)
    {
        string zip = line.GetValue(_model)!;
        string dataPath = line.GetValue(_data)!;
        string output = line.GetValue(_out)!;
        var device = CommonOptions.Device(line);
        CommonOptions.Threads(line);
        if (device.type != TorchSharp.DeviceType.CPU)
            throw new UsageException($"classify scores on the CPU (the zip is CPU fp32); drop --device {device.type.ToString().ToLowerInvariant()}.");
        if (Directory.Exists(zip)) throw new ArgumentException($"'{zip}' is a folder; classify takes the zip written by 'cmoe classify-train'. Train one first.");
        if (!File.Exists(zip)) throw new FileNotFoundException($"Model zip '{zip}' does not exist.", zip);
        if (!File.Exists(dataPath)) throw new FileNotFoundException($"Input file '{dataPath}' does not exist.", dataPath);
        string? outDir = Path.GetDirectoryName(Path.GetFullPath(output));
        if (outDir is not null && !Directory.Exists(outDir)) throw new DirectoryNotFoundException($"The folder of --out '{output}' does not exist; create it first.");
        var header = ClassifyTrainCommand.Header(dataPath);

        var ml = new MLContext(seed: 0);
        var model = ml.LoadCMoEModel(zip, out _);
        try
        {
            var classifier = Find(model) ?? throw new ArgumentException($"'{zip}' holds no LanguageModelClassifier; train one with 'cmoe classify-train' (use 'cmoe score' for other CMoE zips).");
            string expected = classifier.TextColumnName;
            string text = line.GetValue(_textColumn) is { } given ? ClassifyTrainCommand.Column(header, given, "--text-column", dataPath) : expected;
            if (!header.Contains(text))
                throw new ArgumentException($"The classifier reads column '{text}', which '{dataPath}' lacks (columns: {string.Join(", ", header)}); pass --text-column.");
            var data = ml.Data.LoadFromTextFile(dataPath, new TextLoader.Options
            {
                Separators = ['\t'], HasHeader = true, AllowQuoting = false, TrimWhitespace = false,
                Columns = header.Select((name, i) => new TextLoader.Column(name, DataKind.String, i)).ToArray(),
            });
            ITransformer pipeline = text == expected ? model
                : ml.Transforms.CopyColumns(expected, text).Fit(data).Append(model);
            var scored = pipeline.Transform(data);
            var columns = header.Select(h => scored.Schema[h]).Concat(
                scored.Schema.Where(c => !c.IsHidden && !header.Contains(c.Name) && !c.Name.StartsWith("cmoe.", StringComparison.Ordinal) && ScoreCommand.Writable(c.Type))).ToList();
            string tmp = output + ".partial";
            using (var bar = Terminal.Progress("classify"))
            {
                try
                {
                    ScoreCommand.Write(scored, columns, tmp, bar, cancel);
                }
                catch
                {
                    File.Delete(tmp);
                    throw;
                }
            }
            File.Move(tmp, output, overwrite: true);
            Terminal.Info($"classified '{dataPath}' with '{zip}' -> '{output}' ({string.Join(", ", columns.Skip(header.Length).Select(c => c.Name))})");
        }
        finally
        {
            (model as IDisposable)?.Dispose();
        }
        return 0;
    }

    private static LanguageModelClassifierTransformer? Find(ITransformer model) => model switch
    {
        LanguageModelClassifierTransformer c => c,
        IEnumerable<ITransformer> chain => chain.Select(Find).FirstOrDefault(c => c is not null),
        _ => null,
    };
}
