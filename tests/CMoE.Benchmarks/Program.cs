using System.Diagnostics;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using CMoE.Benchmarks;
using static TorchSharp.torch;

// BenchmarkDotNet kernels, run in process (InProcessEmitToolchain): BenchmarkDotNet's default toolchain
// builds a child project in another folder, whose output would miss the Debian 12 libLibTorchSharp fix.
// "quick" runs a short Stopwatch comparison instead (medians of interleaved repetitions).
if (args.Length > 0 && args[0] == "decode-profile")
{
    DecodeProfile.Run(args.Length > 1 ? args[1] : "models/tinyref-llama", args.Length > 2 ? args[2] : "fp32", args.Length > 3 ? int.Parse(args[3]) : 1);
    return;
}
if (args.Length > 0 && args[0] == "matvec")
{
    MatVecSpeed.Run();
    return;
}
if (args.Length > 0 && args[0] == "quick")
{
    Quick.Run(args.Length > 1 ? args[1] : "S2A2E16");
    return;
}
var config = DefaultConfig.Instance
    .AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance))
    .WithOptions(ConfigOptions.JoinSummary);
BenchmarkSwitcher.FromAssembly(typeof(FfnKernels).Assembly).Run(args, config);

/// <summary>A quick dense-vs-MoE decode/prefill comparison without BenchmarkDotNet.</summary>
internal static class Quick
{
    public static void Run(string layout)
    {
        TorchSharp.torch.set_num_threads(1);
        using var noGrad = no_grad();
        var (dense, moe) = Kernels.Build(2048, 5632, CMoE.Carving.MoeLayout.Parse(layout), seed: 0);
        var xs = Enumerable.Range(0, 64).Select(_ => randn(1, 1, 2048)).ToArray();
        var prefill = randn(1, 512, 2048);
        double Time(Action a, int n) { var t = Stopwatch.StartNew(); for (int i = 0; i < n; i++) a(); return t.Elapsed.TotalMilliseconds * 1e3 / n; }
        var results = new Dictionary<string, List<double>>();
        void Add(string k, double v) { if (!results.TryGetValue(k, out var l)) results[k] = l = []; l.Add(v); }
        for (int r = 0; r < 7; r++)
        {
            int i = 0;
            Add("dense decode us", Time(() => { using var y = dense.forward(xs[i++ & 63]); }, 64));
            Add("moe decode us", Time(() => { using var y = moe.forward(xs[i++ & 63]); }, 64));
            Add("moe shared-only us", Time(() => { using var y = moe.SharedExpert!.forward(xs[i++ & 63]); }, 64));
            Add("dense prefill us/token", Time(() => { using var y = dense.forward(prefill); }, 1) / 512);
            Add("moe prefill us/token", Time(() => { using var y = moe.forward(prefill); }, 1) / 512);
        }
        foreach (var (k, v) in results) Console.WriteLine($"{k,-24} median {v.OrderBy(x => x).ElementAt(v.Count / 2),10:F1}  min {v.Min(),10:F1}");
    }
}
