using System.CommandLine;
using System.Globalization;
using System.Text;
using CMoE.MLNet;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace CMoE.Cli.Commands;

/// <summary><c>cmoe score</c>: scores the rows of a TSV file with a model zip or a model folder through ML.NET.</summary>
internal sealed class ScoreCommand : ICommand
{
    private readonly Option<string> _model = CliOptions.Required("--model", "zip|folder", "an ML.NET model zip, or a dense or carved model folder");
    private readonly Option<string> _input = CliOptions.Required("--input", "tsv", "tab-separated input with a header row");
    private readonly Option<string> _textColumn = CliOptions.Required("--text-column", "name", "the column holding the text");
    private readonly Option<string> _out = CliOptions.Required("--out", "tsv", "the output TSV to write");
    private readonly Option<int> _maxTokens = CliOptions.Int("--max-tokens", 512, "tokens scored per row (model folder only)", min: 2);
    private readonly Option<int> _batch = CliOptions.Int("--batch", 8, "rows per forward pass (model folder only)", min: 1);
    private readonly Option<bool> _embeddings = CliOptions.Flag("--embeddings", "also write the Embedding column (model folder only)");

    public string Name => "score";

    public string Summary => "score a TSV's text column with a model zip or folder (perplexity, log-likelihood, ...)";

    public string Details => """
        The input is a tab-separated file with a header row. The output holds every input column plus the
        model's output columns: for a model folder (dense or carved), Perplexity and LogLikelihood (and
        Embedding with --embeddings, values separated by spaces); for a model zip saved by
        mlContext.Model.Save, every scalar or float-vector column its pipeline adds (e.g. Probability).
        --max-tokens, --batch and --weights (the format the model is held in: default fp32 for a Hugging Face
        folder, the recorded format for a carved folder) apply to a model folder; a zip keeps the settings and
        weights it was saved with.
        Empty text scores Perplexity NaN and LogLikelihood 0. The output is written to a temporary file and
        moved into place when complete.
        """;

    public IEnumerable<Option> Options =>
        [_model, _input, _textColumn, _out, _maxTokens, _batch, _embeddings, CommonOptions.WeightsOption, .. CommonOptions.Runtime];

    public int Run(ParseResult line, CancellationToken cancel)
    {
        string modelPath = line.GetValue(_model)!;
        string input = line.GetValue(_input)!;
        string textColumn = line.GetValue(_textColumn)!;
        string output = line.GetValue(_out)!;
        int maxTokens = line.GetValue(_maxTokens);
        int batch = line.GetValue(_batch);
        bool embeddings = line.GetValue(_embeddings);
        var weights = CommonOptions.Weights(line);
        var device = CommonOptions.Device(line);
        CommonOptions.Threads(line);
        if (device.type != TorchSharp.DeviceType.CPU)
            throw new UsageException($"score runs the ML.NET layer on the CPU; drop --device {device.type.ToString().ToLowerInvariant()}.");
        if (!File.Exists(input)) throw new FileNotFoundException($"Input file '{input}' does not exist.");
        if (weights is not null && File.Exists(modelPath))
            throw new UsageException($"--weights applies to a model folder; the zip '{modelPath}' keeps the weights it was saved with. Drop --weights, or save the pipeline again with ScoringOptions.Weights = {weights}.");

        var ml = new MLContext(seed: 0);
        string[] header = (File.ReadLines(input).FirstOrDefault() ?? "").Split('\t');
        if (header.Length == 0 || header.All(string.IsNullOrEmpty))
            throw new ArgumentException($"Input file '{input}' is empty; it needs a header row of tab-separated column names.");
        if (!header.Contains(textColumn))
            throw new ArgumentException($"Column '{textColumn}' is not in the header of '{input}' (columns: {string.Join(", ", header)}); pass --text-column with one of them.");
        var data = ml.Data.LoadFromTextFile(input, new TextLoader.Options
        {
            Separators = ['\t'], HasHeader = true, AllowQuoting = false, TrimWhitespace = false,
            Columns = header.Select((name, i) => new TextLoader.Column(name, DataKind.String, i)).ToArray(),
        });

        ITransformer model;
        if (Directory.Exists(modelPath))
        {
            model = ml.Transforms.ScoreWithLanguageModel(new LanguageModelScoringEstimator.Options
            {
                ModelFolder = modelPath, TextColumnName = textColumn, MaxTokens = maxTokens, BatchSize = batch,
                EmbeddingColumnName = embeddings ? "Embedding" : null, Weights = weights,
            }).Fit(data);
        }
        else if (File.Exists(modelPath))
        {
            model = ml.LoadCMoEModel(modelPath, out var saved);
            string expected = TextColumnOf(model) ?? textColumn;
            if (expected != textColumn)
                model = ml.Transforms.CopyColumns(expected, textColumn).Fit(data).Append(model);
        }
        else
        {
            throw new FileNotFoundException($"Model '{modelPath}' is neither a model zip nor a model folder.");
        }

        try
        {
            var scored = model.Transform(data);
            var columns = header.Select(h => scored.Schema[h]).Concat(
                scored.Schema.Where(c => !c.IsHidden && !header.Contains(c.Name) && Writable(c.Type))).ToList();
            long rows = data.GetRowCount() ?? 0;
            string tmp = output + ".partial";
            using (var bar = Terminal.Progress("score"))
            {
                try
                {
                    Write(scored, columns, tmp, bar, cancel);
                }
                catch
                {
                    File.Delete(tmp);
                    throw;
                }
            }
            File.Move(tmp, output, overwrite: true);
            Terminal.Info($"scored '{input}' with '{modelPath}' -> '{output}' ({string.Join(", ", columns.Skip(header.Length).Select(c => c.Name))})");
        }
        finally
        {
            (model as IDisposable)?.Dispose();
        }
        return 0;
    }

    internal static string? TextColumnOf(ITransformer model) => model switch
    {
        LanguageModelTransformerBase lm => lm.TextColumnName,
        IEnumerable<ITransformer> chain => chain.Select(TextColumnOf).FirstOrDefault(n => n is not null),
        _ => null,
    };

    internal static bool Writable(DataViewType type) =>
        type is TextDataViewType or BooleanDataViewType || type == NumberDataViewType.Single || type == NumberDataViewType.Double
        || type is VectorDataViewType { ItemType: var item } && item == NumberDataViewType.Single;

    internal static void Write(IDataView scored, List<DataViewSchema.Column> columns, string path, ProgressBar bar, CancellationToken cancel)
    {
        long total = scored.GetRowCount() ?? 0;
        using var writer = new StreamWriter(path, append: false, new UTF8Encoding(false));
        writer.WriteLine(string.Join('\t', columns.Select(c => c.Name)));
        using var cursor = scored.GetRowCursor(columns);
        var readers = columns.Select(c => Reader(cursor, c)).ToArray();
        long n = 0;
        while (cursor.MoveNext())
        {
            cancel.ThrowIfCancellationRequested();
            writer.WriteLine(string.Join('\t', readers.Select(r => r())));
            if (total > 0) bar.Report((double)++n / total);
        }
    }

    internal static Func<string> Reader(DataViewRowCursor cursor, DataViewSchema.Column column)
    {
        var inv = CultureInfo.InvariantCulture;
        switch (column.Type)
        {
            case TextDataViewType:
            {
                var get = cursor.GetGetter<ReadOnlyMemory<char>>(column);
                ReadOnlyMemory<char> v = default;
                return () => { get(ref v); return v.ToString(); };
            }
            case BooleanDataViewType:
            {
                var get = cursor.GetGetter<bool>(column);
                bool v = false;
                return () => { get(ref v); return v ? "true" : "false"; };
            }
            case VectorDataViewType:
            {
                var get = cursor.GetGetter<VBuffer<float>>(column);
                VBuffer<float> v = default;
                return () => { get(ref v); return string.Join(' ', v.DenseValues().Select(x => x.ToString("R", inv))); };
            }
            default:
                if (column.Type == NumberDataViewType.Double)
                {
                    var get = cursor.GetGetter<double>(column);
                    double v = 0;
                    return () => { get(ref v); return v.ToString("R", inv); };
                }
                else
                {
                    var get = cursor.GetGetter<float>(column);
                    float v = 0;
                    return () => { get(ref v); return v.ToString("R", inv); };
                }
        }
    }
}
