using System.Diagnostics;
using CMoE.Modeling.Kernels;
using CMoE.Modeling.Weights;
using static TorchSharp.torch;

namespace CMoE.Benchmarks;

/// <summary>
/// <c>CMoE.Benchmarks matvec</c>: the managed matrix-vector kernels per weight format and instruction path, on a matrix that
/// fits in the last-level cache and on one that does not, with 1 and 2 worker threads: microseconds per product and GB/s of
/// weights read, beside the probed read bandwidth. Minimum over 39 repetitions after a warm-up (the least disturbed on a shared machine).
/// </summary>
internal static class MatVecSpeed
{
    public static void Run()
    {
        set_num_threads(1);
        Console.WriteLine($"CPU: {Machine.CpuName()}; read bandwidth probe: {Probe(1):F1} GB/s (1 thread), {Probe(2):F1} GB/s (2 threads)");
        Console.WriteLine($"{"format",-9} {"path",-10} {"shape",-14} {"threads",7} {"us",10} {"GB/s",8} {"cpu us",10} {"GB/s",8}  (cpu: the thread's own CPU time, 1 thread)");
        foreach (var (rows, cols) in new[] { (1536, 1024), (16384, 4096) })
            foreach (var format in new[] { "fp32", "bf16", "int8:32", "int8:128" })
            {
                using var scope = NewDisposeScope();
                var f = WeightFormat.Parse(format).For(cols);
                var w = StoredWeight.Allocate([rows, cols], f);
                w.Assign(randn(new long[] { rows, cols }));
                var view = MatrixView.Of(w)!.Value;
                var x = randn(new long[] { cols }).data<float>().ToArray();
                var y = new float[rows];
                var paths = f.Kind == WeightKind.Int8 ? KernelPaths.Int8Available() : f.Kind == WeightKind.Bf16 ? KernelPaths.Bf16Available() : [KernelPath.Scalar];
                foreach (var path in paths.Where(p => p != KernelPath.Scalar || f.Kind == WeightKind.Fp32))
                    foreach (int threads in new[] { 1, 2 })
                    {
                        KernelPaths.Force(f.Kind == WeightKind.Fp32 ? null : path);
                        WorkerPool.Configure(threads);
                        int reps = view.Bytes > 32L << 20 ? 2 : 20;
                        var times = new List<double>();
                        var cpu = new List<double>();
                        for (int r = 0; r < 40; r++)
                        {
                            long t0 = Stopwatch.GetTimestamp();
                            double c0 = ThreadCpu.Microseconds();
                            for (int k = 0; k < reps; k++) MatVec.Run(view, x, y);
                            if (r > 0)
                            {
                                times.Add(Stopwatch.GetElapsedTime(t0).TotalMicroseconds / reps);
                                cpu.Add((ThreadCpu.Microseconds() - c0) / reps);
                            }
                        }
                        double us = times.Min();                                    // the least disturbed repetition
                        double cpuUs = cpu.Min();
                        Console.WriteLine($"{format,-9} {(f.Kind == WeightKind.Fp32 ? "vector" : path.ToString()),-10} {rows + "x" + cols,-14} {threads,7} {us,10:F1} {view.Bytes / us / 1e3,8:F1} {(threads == 1 ? $"{cpuUs,10:F1} {view.Bytes / cpuUs / 1e3,8:F1}" : "")}");
                    }
                KernelPaths.Force(null);
            }
        WorkerPool.Configure(1);
    }

    private static double Probe(int threads)
    {
        WorkerPool.Configure(threads);
        return BandwidthProbe.ReadGBps(threads);
    }
}

/// <summary>The calling thread's CPU time (Linux CLOCK_THREAD_CPUTIME_ID): unaffected by time the thread spent waiting for a core.</summary>
internal static class ThreadCpu
{
    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential)]
    private struct TimeSpec { public long Seconds, Nanoseconds; }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "clock_gettime")]
    private static extern int ClockGetTime(int clock, out TimeSpec time);

    /// <summary>Microseconds of CPU time this thread has used.</summary>
    public static double Microseconds() => ClockGetTime(3, out var t) == 0 ? t.Seconds * 1e6 + t.Nanoseconds / 1e3 : double.NaN;
}

/// <summary>What the benchmarks print about the machine.</summary>
internal static class Machine
{
    /// <summary>The CPU model name from /proc/cpuinfo (or the OS description elsewhere).</summary>
    public static string CpuName()
    {
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
            if (line is not null) return line[(line.IndexOf(':') + 1)..].Trim() + $" ({Environment.ProcessorCount} cores)";
        }
        catch (IOException) { }
        return System.Runtime.InteropServices.RuntimeInformation.OSDescription;
    }
}
