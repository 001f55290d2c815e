using System.CommandLine;
using System.Text.Json.Nodes;
using CMoE.Cli.Bench;

namespace CMoE.Cli.Commands;

/// <summary><c>cmoe synth</c>: write a model folder of a named shape with random weights (memory and speed tests).</summary>
internal sealed class SynthCommand : ICommand
{
    private readonly Option<string> _shape = CliOptions.Required("--shape", string.Join("|", SyntheticModels.Shapes.Keys), "the model shape to write");
    private readonly Option<string> _out = CliOptions.Required("--out", "folder", "the folder to write");
    private readonly Option<int> _seed = CliOptions.Int("--seed", 0, "random seed of the weights");
    private readonly Option<string> _dtype = new Option<string>("--dtype")
        { Description = "dtype of the weights written", HelpName = "fp32|bf16", DefaultValueFactory = _ => "fp32" }.AcceptOnlyFromAmong("fp32", "bf16");
    private readonly Option<string?> _tokenizer = CliOptions.Optional("--tokenizer", "folder",
        "folder whose tokenizer files are copied (default: the embedded models/tinyref-llama)");

    public string Name => "synth";

    public string Summary => "write a random-weight model folder of a named shape (for memory/speed tests)";

    public string Details => """
        Writes config.json and model.safetensors (fp32 or bf16, N(0, 0.02) weights, unit norms) one tensor at a time,
        plus the tokenizer files of --tokenizer, so `cmoe carve` can calibrate on any text. tinyllama-1.1b is
        TinyLlama-1.1B's full shape (4.4 GB in fp32); llama2-7b is Llama-2-7B's (13.5 GB in bf16).
        """;

    public IEnumerable<Option> Options => [_shape, _out, _seed, _dtype, _tokenizer, CommonOptions.ThreadsOption, CommonOptions.JsonOption];

    public int Run(ParseResult line, CancellationToken cancel)
    {
        var config = SyntheticModels.Get(line.GetValue(_shape)!);
        string outDir = line.GetValue(_out)!;
        int seed = line.GetValue(_seed);
        var dtype = line.GetValue(_dtype) == "bf16" ? TorchSharp.torch.ScalarType.BFloat16 : TorchSharp.torch.ScalarType.Float32;
        string tokenizer = line.GetValue(_tokenizer) ?? EmbeddedModel();
        bool json = line.GetValue(CommonOptions.JsonOption);
        CommonOptions.Threads(line);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        SyntheticModels.WriteFolder(config, outDir, seed, tokenizer, dtype);
        long bytes = new FileInfo(Path.Combine(outDir, "model.safetensors")).Length;
        if (json)
            Terminal.WriteJson(new JsonObject { ["out"] = Path.GetFullPath(outDir), ["bytes"] = bytes, ["seconds"] = Math.Round(clock.Elapsed.TotalSeconds, 1), ["peak_rss_mb"] = ProcessMemory.PeakRssMb() });
        else
            Console.WriteLine($"wrote {outDir} ({bytes / 1e9:F2} GB) in {clock.Elapsed.TotalSeconds:F1} s");
        return 0;
    }

    /// <summary>models/tinyref-llama above the executable or the current directory.</summary>
    private static string EmbeddedModel()
    {
        foreach (var start in new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                string candidate = Path.Combine(dir.FullName, "models", "tinyref-llama");
                if (File.Exists(Path.Combine(candidate, "tokenizer.model"))) return candidate;
            }
        throw new UsageException("the embedded model was not found; pass --tokenizer <folder with tokenizer files>");
    }
}
