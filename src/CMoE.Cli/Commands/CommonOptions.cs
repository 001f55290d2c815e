using System.CommandLine;
using CMoE.Modeling.Backend;
using CMoE.Modeling.Weights;
using TorchSharp;

namespace CMoE.Cli.Commands;

/// <summary>Options several commands share (threads, device, weight format, JSON output) and the checks they share.</summary>
internal static class CommonOptions
{
    public static readonly Option<int> ThreadsOption = CliOptions.Int("--threads", 0,
        "CPU threads for libtorch and the managed kernels (0 = libtorch's default: the machine's cores)", min: 0);

    public static readonly Option<string> DeviceOption = new("--device")
    {
        Description = "where to run: cpu, cuda, or auto (cuda when a CUDA libtorch loads)",
        HelpName = "auto|cpu|cuda", DefaultValueFactory = _ => "cpu",
    };

    public static readonly Option<string?> LibtorchOption = CliOptions.Optional("--libtorch", "dir",
        "folder of a CUDA libtorch 2.10 to load for --device cuda (e.g. an installed PyTorch's lib folder)");

    public static readonly Option<string?> WeightsOption = CliOptions.Optional("--weights", "fp32|bf16|int8|int8:32|int8:64|int8:128",
        "format the weights are held in (int8:G = groups of G input columns); default: the folder's recorded format, fp32 for a Hugging Face folder");

    public static readonly Option<bool> JsonOption = CliOptions.Flag("--json", "print the result as JSON on stdout (progress stays on stderr)");

    /// <summary>--threads, --device and --libtorch.</summary>
    public static IEnumerable<Option> Runtime => [ThreadsOption, DeviceOption, LibtorchOption];

    static CommonOptions() => DeviceOption.CompletionSources.Add("auto", "cpu", "cuda");

    /// <summary>The --weights format, or null when not given (the folder's recorded format, fp32 for Hugging Face folders).</summary>
    public static WeightFormat? Weights(ParseResult line) =>
        line.GetValue(WeightsOption) is { } name ? WeightFormat.Parse(name) : null;

    /// <summary>Throws a usage error when low-bit weights are asked for on another device than the CPU.</summary>
    public static void RequireCpuFor(WeightFormat? weights, torch.Device device)
    {
        if (weights is { Kind: not WeightKind.Fp32 } && device.type != DeviceType.CPU)
            throw new UsageException($"--weights {weights} is a CPU inference format; on {device.type.ToString().ToLowerInvariant()} leave --weights at fp32 (or drop --device).");
    }

    /// <summary>Applies --threads and returns the thread count in force.</summary>
    public static int Threads(ParseResult line)
    {
        TorchRuntime.SetThreads(line.GetValue(ThreadsOption));
        return TorchRuntime.Threads;
    }

    /// <summary>Reads a non-empty text file named by an option; <paramref name="what"/> names it in messages.</summary>
    public static string ReadText(string path, string what)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{what} text '{path}' does not exist.", path);
        string text = File.ReadAllText(path);
        if (text.Length == 0) throw new ArgumentException($"{what} text '{path}' is empty; give a text with some content.");
        return text;
    }

    /// <summary>The config of a dense model folder; a carved folder is rejected (it cannot be carved or swept again).</summary>
    public static Modeling.LlamaConfig DenseConfig(string modelDir, string verb)
    {
        var config = Modeling.LlamaConfig.Load(modelDir);
        if (Modeling.IO.ModelFolder.IsCarved(modelDir))
            throw new ArgumentException($"'{modelDir}' is already carved; {verb} the dense model it came from.");
        return config;
    }

    /// <summary>Resolves --device/--libtorch.</summary>
    public static torch.Device Device(ParseResult line)
    {
        var kind = TorchRuntime.ParseKind(line.GetValue(DeviceOption) ?? "cpu");
        return TorchRuntime.Resolve(kind, line.GetValue(LibtorchOption));
    }
}
