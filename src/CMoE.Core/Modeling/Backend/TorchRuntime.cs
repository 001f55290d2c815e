using System.Diagnostics;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Modeling.Backend;

/// <summary>Which device a command or pipeline asks for.</summary>
public enum DeviceKind
{
    /// <summary>CUDA when a CUDA libtorch is found and a GPU answers, else CPU.</summary>
    Auto,
    /// <summary>The CPU (libtorch-cpu shipped with the package).</summary>
    Cpu,
    /// <summary>A CUDA GPU; fails with a clear message when none can be initialised.</summary>
    Cuda,
}

/// <summary>
/// The one place that decides the device, dtype and thread count. CUDA comes from an existing CUDA
/// libtorch folder (TorchSharp's CUDA packages are not used): the folder named by
/// <see cref="LibTorchEnvironmentVariable"/> or the <c>libTorchDir</c> argument, else the
/// <c>torch/lib</c> folder of a Python PyTorch install found with <c>python3</c>. Its libraries are
/// loaded by full path before TorchSharp's own native library, then CUDA is initialised.
/// </summary>
public static class TorchRuntime
{
    /// <summary>Environment variable naming a CUDA libtorch folder (e.g. <c>.../site-packages/torch/lib</c>).</summary>
    public const string LibTorchEnvironmentVariable = "CMOE_LIBTORCH";

    private static readonly object Gate = new();
    private static torch.Device? _resolved;
    private static string? _cudaLibTorch;

    /// <summary>The libtorch folder CUDA was loaded from, or null.</summary>
    public static string? CudaLibTorchFolder => _cudaLibTorch;

    /// <summary>
    /// Sets the thread count of libtorch's intra-op pool and of the managed kernels' persistent workers
    /// (<see cref="Kernels.WorkerPool"/>); 0 keeps libtorch's default (the machine's cores) for both.
    /// </summary>
    public static void SetThreads(int threads)
    {
        if (threads > 0) torch.set_num_threads(threads);
        Kernels.WorkerPool.Configure(torch.get_num_threads());
    }

    /// <summary>The current intra-op thread count.</summary>
    public static int Threads => torch.get_num_threads();

    /// <summary>
    /// Resolves the device. Must run before any other torch call when CUDA is wanted, because the CUDA
    /// libtorch has to be loaded before TorchSharp loads the CPU one.
    /// </summary>
    /// <exception cref="InvalidOperationException">CUDA was asked for and cannot be initialised; the message says why and what to do.</exception>
    public static torch.Device Resolve(DeviceKind kind, string? libTorchDir = null)
    {
        lock (Gate)
        {
            if (_resolved is not null && (kind == DeviceKind.Auto || (kind == DeviceKind.Cuda) == (_resolved.type == DeviceType.CUDA)))
                return _resolved;
            if (kind == DeviceKind.Cpu) return _resolved = CPU;
            string? folder = libTorchDir ?? Environment.GetEnvironmentVariable(LibTorchEnvironmentVariable) ?? FindPythonTorchLib();
            string? failure = folder is null
                ? $"no CUDA libtorch folder was given: set {LibTorchEnvironmentVariable} or pass --libtorch <dir> (the torch/lib folder of a CUDA PyTorch install)"
                : TryLoadCuda(folder);
            if (failure is null) return _resolved = CUDA;
            if (kind == DeviceKind.Cuda)
                throw new InvalidOperationException($"CUDA was requested but cannot be initialised: {failure}. Use --device cpu, or fix the CUDA libtorch folder.");
            return _resolved = CPU;
        }
    }

    /// <summary>Parses "auto", "cpu" or "cuda".</summary>
    public static DeviceKind ParseKind(string text) => text.ToLowerInvariant() switch
    {
        "auto" => DeviceKind.Auto,
        "cpu" => DeviceKind.Cpu,
        "cuda" or "gpu" => DeviceKind.Cuda,
        _ => throw new ArgumentException($"Unknown device '{text}'. Use auto, cpu or cuda."),
    };

    private static string? TryLoadCuda(string folder)
    {
        if (_cudaLibTorch is not null) return cuda.is_available() ? null : "a CUDA libtorch is loaded but no GPU answers";
        if (!Directory.Exists(folder)) return $"the libtorch folder '{folder}' does not exist";
        string[] chain = ["libc10.so", "libtorch_cpu.so", "libc10_cuda.so", "libtorch_cuda.so", "libtorch.so"];
        foreach (var lib in chain)
        {
            string path = Path.Combine(folder, lib);
            if (!File.Exists(path)) return $"'{folder}' has no {lib}; it is not a CUDA libtorch folder";
            try { NativeLibrary.Load(path); }
            catch (Exception e) { return $"loading '{path}' failed ({e.Message})"; }
        }
        try
        {
            string own = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
            if (!File.Exists(own)) own = Path.Combine(AppContext.BaseDirectory, "libLibTorchSharp.so");
            NativeLibrary.Load(own);
            torch.InitializeDeviceType(DeviceType.CUDA);
        }
        catch (Exception e)
        {
            return $"TorchSharp could not start CUDA from '{folder}' ({e.Message})";
        }
        if (!cuda.is_available()) return "libtorch loaded but reports no CUDA device";
        _cudaLibTorch = folder;
        return null;
    }

    /// <summary>The torch/lib folder of a Python PyTorch install with CUDA libraries, or null.</summary>
    private static string? FindPythonTorchLib()
    {
        try
        {
            var psi = new ProcessStartInfo("python3", "-c \"import torch,os;print(os.path.dirname(torch.__file__))\"")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            using var p = Process.Start(psi);
            if (p is null) return null;
            string output = p.StandardOutput.ReadToEnd().Trim();
            if (!p.WaitForExit(20_000) || p.ExitCode != 0 || output.Length == 0) return null;
            string lib = Path.Combine(output, "lib");
            return File.Exists(Path.Combine(lib, "libtorch_cuda.so")) ? lib : null;
        }
        catch (Exception)
        {
            return null; // no python3, or no torch: CPU it is
        }
    }
}
