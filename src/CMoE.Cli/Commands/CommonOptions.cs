using CMoE.Modeling.Backend;
using TorchSharp;

namespace CMoE.Cli.Commands;

/// <summary>Options several commands share: threads and device.</summary>
internal static class CommonOptions
{
    public const string ThreadsUsage = "[--threads N (0 = libtorch default)]";
    public const string DeviceUsage = "[--device auto|cpu|cuda] [--libtorch <dir>]";
    public const string WeightsUsage = "[--weights fp32|bf16|int8|int8:32|int8:64|int8:128]";

    /// <summary>The --weights format, or null when not given (the folder's recorded format, fp32 for Hugging Face folders).</summary>
    public static Modeling.Weights.WeightFormat? Weights(CommandLine line) =>
        line.Optional("weights") is { } name ? Modeling.Weights.WeightFormat.Parse(name) : null;

    /// <summary>Throws a usage error when low-bit weights are asked for on another device than the CPU.</summary>
    public static void RequireCpuFor(Modeling.Weights.WeightFormat? weights, torch.Device device)
    {
        if (weights is { Kind: not Modeling.Weights.WeightKind.Fp32 } && device.type != DeviceType.CPU)
            throw new UsageException($"--weights {weights} is a CPU inference format; on {device.type.ToString().ToLowerInvariant()} leave --weights at fp32 (or drop --device).");
    }

    /// <summary>Applies --threads and returns the thread count in force.</summary>
    public static int Threads(CommandLine line, int fallback = 0)
    {
        TorchRuntime.SetThreads(line.Int("threads", fallback, min: 0));
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

    /// <summary>Resolves --device/--libtorch (default cpu unless stated).</summary>
    public static torch.Device Device(CommandLine line, string fallback = "cpu")
    {
        var kind = TorchRuntime.ParseKind(line.Optional("device") ?? fallback);
        return TorchRuntime.Resolve(kind, line.Optional("libtorch"));
    }
}
