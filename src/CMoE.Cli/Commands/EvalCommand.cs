using System.Text.Json.Nodes;
using CMoE.Evaluation;
using CMoE.Modeling.IO;
using CMoE.Modeling.Tokenization;

namespace CMoE.Cli.Commands;

/// <summary><c>cmoe eval</c>: perplexity of a dense or carved model on a text file.</summary>
internal sealed class EvalCommand : ICommand
{
    public string Summary => "perplexity of a dense or carved model on a text file";

    public string Usage => $"""
        cmoe eval --model <hf-folder|carved-folder> --text <file> [--seq-len 512] [--max-windows 256]
                  [--batch 4] {CommonOptions.WeightsUsage} {CommonOptions.ThreadsUsage} {CommonOptions.DeviceUsage} [--json]
          Token stream = BOS + encode(whole file as one document); consecutive non-overlapping windows of
          seq-len tokens from the start (last partial window dropped), at most max-windows of them;
          perplexity = exp(mean NLL of positions 1..seq-len-1 of each window).
        """;

    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "json", "verbose" };

    public int Run(CommandLine line, CancellationToken cancel)
    {
        string modelDir = line.Required("model", "hf-folder");
        string textPath = line.Required("text", "file");
        int seqLen = line.Int("seq-len", 512, min: 2);
        int maxWindows = line.Int("max-windows", 256, min: 1);
        int batch = line.Int("batch", 4, min: 1);
        bool json = line.Flag("json");
        var device = CommonOptions.Device(line);
        var weights = CommonOptions.Weights(line);
        int threads = CommonOptions.Threads(line);
        line.RejectUnknown();

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
