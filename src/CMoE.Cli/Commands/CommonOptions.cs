using CMoE.Modeling.Backend;
using TorchSharp;

namespace CMoE.Cli.Commands;

/// <summary>Options several commands share: threads and device.</summary>
internal static class CommonOptions
{
    public const string ThreadsUsage = "[--threads N (0 = libtorch default)]";
    public const string DeviceUsage = "[--device auto|cpu|cuda] [--libtorch <dir>]";

    /// <summary>Applies --threads and returns the thread count in force.</summary>
    public static int Threads(CommandLine line, int fallback = 0)
    {
        TorchRuntime.SetThreads(line.Int("threads", fallback, min: 0));
        return TorchRuntime.Threads;
    }

    /// <summary>Resolves --device/--libtorch (default cpu unless stated).</summary>
    public static torch.Device Device(CommandLine line, string fallback = "cpu")
    {
        var kind = TorchRuntime.ParseKind(line.Optional("device") ?? fallback);
        return TorchRuntime.Resolve(kind, line.Optional("libtorch"));
    }
}
