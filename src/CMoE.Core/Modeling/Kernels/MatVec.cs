using System.Buffers;
using System.Runtime.CompilerServices;
using CMoE.Modeling.Weights;

namespace CMoE.Modeling.Kernels;

/// <summary>
/// y = W x (or y += scale W x) for a weight matrix in any format, the decode steps' workhorse: the format's row kernel
/// (<see cref="Fp32Rows"/>, <see cref="Bf16Rows"/>, <see cref="Int8Rows"/> after quantizing x once), with the rows of a
/// large matrix shared among the <see cref="WorkerPool"/>'s threads (about <see cref="BytesPerThread"/> of weights each at
/// least, so a small matrix is not split finer than the hand-off costs).
/// </summary>
internal static unsafe class MatVec
{
    /// <summary>A matrix is split across threads only in shares of at least this many bytes.</summary>
    public static long BytesPerThread { get; set; } = 96 * 1024;

    /// <summary>x [cols] -> y [rows].</summary>
    public static void Run(in MatrixView w, ReadOnlySpan<float> x, Span<float> y) => Run(w, x, y, false, 1f);

    /// <summary>y = W x, or y += scale W x when <paramref name="accumulate"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(in MatrixView w, ReadOnlySpan<float> x, Span<float> y, bool accumulate, float scale)
    {
        if (x.Length != w.Cols || y.Length < w.Rows) throw new ArgumentException($"A [{w.Rows}, {w.Cols}] matrix cannot take {x.Length} inputs into {y.Length} outputs.");
        fixed (float* xp = x)
        fixed (float* yp = y)
        {
            var job = new Job { W = w, X = xp, Y = yp, Accumulate = accumulate, Scale = scale };
            if (w.Kind != WeightKind.Int8)
            {
                Dispatch(&job);
                return;
            }
            int bytes = QuantizedVector.ScratchBytes(w.Cols);
            byte[]? rented = bytes > 16 * 1024 ? ArrayPool<byte>.Shared.Rent(bytes) : null;
            byte* stack = stackalloc byte[rented is null ? bytes : 0];
            try
            {
                fixed (byte* heap = rented)
                {
                    job.Q = QuantizedVector.Quantize(xp, w.Cols, w.Group, rented is null ? stack : heap);
                    Dispatch(&job);
                }
            }
            finally
            {
                if (rented is not null) ArrayPool<byte>.Shared.Return(rented);
            }
        }
    }

    private static void Dispatch(Job* job)
    {
        long shares = job->W.Bytes / BytesPerThread;
        WorkerPool.Shared.Run(&Rows, job, job->W.Rows, granularity: 4, maxThreads: (int)Math.Clamp(shares, 1, int.MaxValue));
    }

    private struct Job
    {
        public MatrixView W;
        public float* X;
        public QuantizedVector Q;
        public float* Y;
        public bool Accumulate;
        public float Scale;
    }

    private static void Rows(void* args, int start, int end)
    {
        var job = (Job*)args;
        ref readonly var w = ref job->W;
        switch (w.Kind)
        {
            case WeightKind.Fp32: Fp32Rows.Run((float*)w.Values, start, end, w.Cols, job->X, job->Y, job->Accumulate, job->Scale); break;
            case WeightKind.Bf16: Bf16Rows.Run((ushort*)w.Values, start, end, w.Cols, job->X, job->Y, job->Accumulate, job->Scale); break;
            default: Int8Rows.Run(w, start, end, job->Q, job->Y, job->Accumulate, job->Scale); break;
        }
    }
}
