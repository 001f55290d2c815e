using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace CMoE.Modeling.Kernels;

/// <summary>
/// Measures the machine's memory read bandwidth the way a decode step reads weights: sequential 64-byte vector loads over a
/// buffer much larger than the last-level cache, on the <see cref="WorkerPool"/>'s threads (each summing its own part), best
/// of a few passes. Benchmarks print decode throughput as a fraction of it ("fraction of the memory limit").
/// </summary>
internal static unsafe class BandwidthProbe
{
    /// <summary>Read GB/s over <paramref name="megabytes"/> MB with <paramref name="threads"/> threads (best of <paramref name="passes"/>).</summary>
    public static double ReadGBps(int threads, int megabytes = 512, int passes = 5)
    {
        long bytes = (long)megabytes << 20;
        byte* buffer = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
        try
        {
            new Span<byte>(buffer, (int)Math.Min(bytes, int.MaxValue)).Fill(1);
            if (bytes > int.MaxValue) new Span<byte>(buffer + int.MaxValue, (int)(bytes - int.MaxValue)).Fill(1);
            var job = new Job { Buffer = buffer, Bytes = bytes };
            double best = 0;
            for (int p = 0; p < passes + 1; p++)                                // the first pass warms up (pages, threads)
            {
                long t0 = Stopwatch.GetTimestamp();
                WorkerPool.Shared.Run(&Read, &job, 1 << 16, granularity: 1, maxThreads: threads);
                double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                if (p > 0) best = Math.Max(best, bytes / seconds / 1e9);
            }
            return best;
        }
        finally
        {
            NativeMemory.AlignedFree(buffer);
        }
    }

    private struct Job
    {
        public byte* Buffer;
        public long Bytes;
        public float Sink;
    }

    /// <summary>Sums blocks [start, end) of the buffer cut into 65,536 blocks.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Read(void* args, int start, int end)
    {
        var job = (Job*)args;
        long block = job->Bytes >> 16;
        float* p = (float*)(job->Buffer + start * block);
        long n = (end - start) * block / 4;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (long i = 0; i + 64 <= n; i += 64)
        {
            a0 += Vector512.Load(p + i);
            a1 += Vector512.Load(p + i + 16);
            a2 += Vector512.Load(p + i + 32);
            a3 += Vector512.Load(p + i + 48);
        }
        job->Sink += Vector512.Sum(a0 + a1 + a2 + a3);                         // keeps the loads alive (races are harmless here)
    }
}
