using System.Text.Json.Nodes;
using CMoE.Cli.Bench;

namespace CMoE.Cli.Commands;

/// <summary><c>cmoe synth</c>: write a model folder of a named shape with random weights (memory and speed tests).</summary>
internal sealed class SynthCommand : ICommand
{
    public string Summary => "write a random-weight model folder of a named shape (for memory/speed tests)";

    public string Usage => $"""
        cmoe synth --shape {string.Join("|", SyntheticModels.Shapes.Keys)} --out <folder> [--seed 0] [--dtype fp32|bf16]
                   [--tokenizer <folder with tokenizer files>] [--json]
          Writes config.json and model.safetensors (fp32 or bf16, N(0, 0.02) weights, unit norms) one tensor at a time,
          plus the tokenizer files of --tokenizer (default: the embedded models/tinyref-llama), so `cmoe carve`
          can calibrate on any text. tinyllama-1.1b is TinyLlama-1.1B's full shape (4.4 GB in fp32);
          llama2-7b is Llama-2-7B's (13.5 GB in bf16).
        """;

    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "json", "verbose" };

    public int Run(CommandLine line, CancellationToken cancel)
    {
        var config = SyntheticModels.Get(line.Required("shape", "name"));
        string outDir = line.Required("out", "folder");
        int seed = line.Int("seed", 0);
        var dtype = (line.Optional("dtype") ?? "fp32") switch
        {
            "fp32" => TorchSharp.torch.ScalarType.Float32,
            "bf16" => TorchSharp.torch.ScalarType.BFloat16,
            var other => throw new UsageException($"--dtype must be fp32 or bf16 (got '{other}')"),
        };
        string tokenizer = line.Optional("tokenizer") ?? EmbeddedModel();
        bool json = line.Flag("json");
        CommonOptions.Threads(line);
        line.RejectUnknown();
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
