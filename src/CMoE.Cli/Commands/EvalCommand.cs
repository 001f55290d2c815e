using System.CommandLine;
using System.Text.Json.Nodes;
using CMoE.Evaluation;
using CMoE.Modeling.IO;
using CMoE.Modeling.Tokenization;

namespace CMoE.Cli.Commands;

/// <summary><c>cmoe eval</c>: perplexity of a dense or carved model on a text file.</summary>
internal sealed class EvalCommand : ICommand
{
    private readonly Option<string> _model = CliOptions.Required("--model", "hf-folder|carved-folder", "the dense (Hugging Face) or carved model folder");
    private readonly Option<string> _text = CliOptions.Required("--text", "file", "the text to evaluate on");
    private readonly Option<int> _seqLen = CliOptions.Int("--seq-len", 512, "tokens per window", min: 2);
    private readonly Option<int> _maxWindows = CliOptions.Int("--max-windows", 256, "at most this many windows", min: 1);
    private readonly Option<int> _batch = CliOptions.Int("--batch", 4, "windows per forward pass", min: 1);

    public string Name => "eval";

    public string Summary => "perplexity of a dense or carved model on a text file";

    public string Details => """
        Token stream = BOS + encode(whole file as one document); consecutive non-overlapping windows of seq-len
        tokens from the start (last partial window dropped), at most max-windows of them;
        perplexity = exp(mean NLL of positions 1..seq-len-1 of each window).
        """;

    public IEnumerable<Option> Options =>
        [_model, _text, _seqLen, _maxWindows, _batch, CommonOptions.WeightsOption, .. CommonOptions.Runtime, CommonOptions.JsonOption];

    public int Run(ParseResult line, CancellationToken cancel)
    {
        string modelDir = line.GetValue(_model)!;
        string textPath = line.GetValue(_text)!;
        int seqLen = line.GetValue(_seqLen);
        int maxWindows = line.GetValue(_maxWindows);
        int batch = line.GetValue(_batch);
        bool json = line.GetValue(CommonOptions.JsonOption);
        var device = CommonOptions.Device(line);
        var weights = CommonOptions.Weights(line);
        int threads = CommonOptions.Threads(line);

        Modeling.LlamaConfig.Load(modelDir);   // fail on a bad model folder before reading anything else
        string text = CommonOptions.ReadText(textPath, "Evaluation");
        var tokenizer = TokenizerLoader.FromFolder(modelDir);
        using var model = ModelFolder.Load(modelDir, weights, device);
        var stream = tokenizer.Encode(text, addBos: true);
        PerplexityResult result;
        ActiveFraction.Reset(model);
        using (var bar = Terminal.Progress("eval"))
            result = PerplexityEvaluator.Evaluate(model, stream, seqLen, maxWindows, batch, bar, cancel);
        var (meanActive, maxActive) = ActiveFraction.Measured(model);

        if (json)
        {
            Terminal.WriteJson(new JsonObject
            {
                ["perplexity"] = result.Perplexity,
                ["tokens"] = result.Tokens,
                ["windows"] = result.Windows,
                ["seconds"] = Math.Round(result.Seconds, 3),
                ["model"] = Path.GetFullPath(modelDir),
                ["threads"] = threads,
                ["device"] = device.ToString(),
                ["weights"] = model.Precision.Weights.ToString(),
                ["text"] = Path.GetFullPath(textPath),
                ["seq_len"] = seqLen,
                ["mean_active_fraction"] = Math.Round(meanActive, 6),
                ["max_active_fraction"] = Math.Round(maxActive, 6),
            });
        }
        else
        {
            Console.WriteLine($"perplexity {result.Perplexity:F2} over {result.Tokens} tokens ({result.Windows} windows of {seqLen}) in {result.Seconds:F1} s, {threads} threads, {device}, {model.Precision.Weights} weights; active FFN fraction mean {meanActive:F4}, max {maxActive:F4}");
        }
        return 0;
    }
}
