using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace CMoE.Modeling.Kernels;

/// <summary>
/// Rows [start, end) of y = W x for fp32 weights, four rows at a time: each x vector load serves four weight rows, four
/// independent accumulators, and the next four rows are prefetched while these compute. On weights that are not in cache
/// (the normal case in a decode step) per-row library dot products ran ~6x slower than this here, and the prefetch alone
/// gave ~1.8x (docs/benchmarks.md, "Inference speed").
/// </summary>
internal static unsafe class Fp32Rows
{
    /// <summary>y[i] = w[i, :] . x, or y[i] += scale * (w[i, :] . x) when <paramref name="accumulate"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(float* w, int start, int end, int cols, float* x, float* y, bool accumulate, float scale)
    {
        int i = start, ahead = KernelMath.PrefetchRows(4L * cols);
        for (; i + 4 <= end; i += 4)
        {
            float* r = w + (long)i * cols;
            if (i + ahead + 4 <= end) KernelMath.Prefetch(r + (long)ahead * cols, 16L * cols);   // four rows ~64 KB ahead, while these compute
            Dot4(r, r + cols, r + 2 * cols, r + 3 * cols, x, cols, out float d0, out float d1, out float d2, out float d3);
            KernelMath.Store(y, i, d0, accumulate, scale);
            KernelMath.Store(y, i + 1, d1, accumulate, scale);
            KernelMath.Store(y, i + 2, d2, accumulate, scale);
            KernelMath.Store(y, i + 3, d3, accumulate, scale);
        }
        for (; i < end; i++) KernelMath.Store(y, i, KernelMath.Dot(w + (long)i * cols, x, cols), accumulate, scale);
    }

    /// <summary>The dot products of four rows with x over n floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4(float* r0, float* r1, float* r2, float* r3, float* x, int n, out float d0, out float d1, out float d2, out float d3)
    {
        int c = 0;
        d0 = d1 = d2 = d3 = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; c <= n - 16; c += 16)
            {
                var xv = Vector512.Load(x + c);
                a0 = Vector512.FusedMultiplyAdd(Vector512.Load(r0 + c), xv, a0);
                a1 = Vector512.FusedMultiplyAdd(Vector512.Load(r1 + c), xv, a1);
                a2 = Vector512.FusedMultiplyAdd(Vector512.Load(r2 + c), xv, a2);
                a3 = Vector512.FusedMultiplyAdd(Vector512.Load(r3 + c), xv, a3);
            }
            (d0, d1, d2, d3) = (Vector512.Sum(a0), Vector512.Sum(a1), Vector512.Sum(a2), Vector512.Sum(a3));
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; c <= n - 8; c += 8)
            {
                var xv = Vector256.Load(x + c);
                a0 = Vector256.FusedMultiplyAdd(Vector256.Load(r0 + c), xv, a0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.Load(r1 + c), xv, a1);
                a2 = Vector256.FusedMultiplyAdd(Vector256.Load(r2 + c), xv, a2);
                a3 = Vector256.FusedMultiplyAdd(Vector256.Load(r3 + c), xv, a3);
            }
            (d0, d1, d2, d3) = (Vector256.Sum(a0), Vector256.Sum(a1), Vector256.Sum(a2), Vector256.Sum(a3));
        }
        for (; c < n; c++)
        {
            float xc = x[c];
            d0 += r0[c] * xc;
            d1 += r1[c] * xc;
            d2 += r2[c] * xc;
            d3 += r3[c] * xc;
        }
    }
}
