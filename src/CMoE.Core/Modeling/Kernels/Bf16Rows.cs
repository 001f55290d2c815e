using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace CMoE.Modeling.Kernels;

/// <summary>
/// Rows [start, end) of y = W x for bf16 weights and fp32 x, accumulated in fp32: a bf16 value is the upper 16 bits of an
/// fp32, so widening to 32 bits and shifting left by 16 gives the exact fp32 weight, then fused multiply-add. Four rows
/// per pass share each x load, as <see cref="Fp32Rows"/>. (.NET 10 exposes no AVX-512 BF16 dot product, so this is the
/// widening path on every CPU.)
/// </summary>
internal static unsafe class Bf16Rows
{
    /// <summary>y[i] = w[i, :] . x, or y[i] += scale * (w[i, :] . x) when <paramref name="accumulate"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(ushort* w, int start, int end, int cols, float* x, float* y, bool accumulate, float scale)
    {
        var path = KernelPaths.Bf16;
        int i = start, ahead = KernelMath.PrefetchRows(2L * cols);
        for (; i + 4 <= end; i += 4)
        {
            ushort* r = w + (long)i * cols;
            if (i + ahead + 4 <= end) KernelMath.Prefetch(r + (long)ahead * cols, 8L * cols);
            Dot4(path, r, r + cols, r + 2 * cols, r + 3 * cols, x, cols, out float d0, out float d1, out float d2, out float d3);
            KernelMath.Store(y, i, d0, accumulate, scale);
            KernelMath.Store(y, i + 1, d1, accumulate, scale);
            KernelMath.Store(y, i + 2, d2, accumulate, scale);
            KernelMath.Store(y, i + 3, d3, accumulate, scale);
        }
        for (; i < end; i++)
        {
            ushort* r = w + (long)i * cols;
            Dot4(path, r, r, r, r, x, cols, out float d, out _, out _, out _);
            KernelMath.Store(y, i, d, accumulate, scale);
        }
    }

    /// <summary>The fp32 value of a bf16 bit pattern.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Load16(ushort* p) =>
        Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512UInt32(Vector256.Load(p)), 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Load8(ushort* p) =>
        Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(Vector128.Load(p)), 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4(KernelPath path, ushort* r0, ushort* r1, ushort* r2, ushort* r3, float* x, int n,
        out float d0, out float d1, out float d2, out float d3)
    {
        int c = 0;
        d0 = d1 = d2 = d3 = 0;
        if (path == KernelPath.Vector512 && n >= 16)
        {
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; c <= n - 16; c += 16)
            {
                var xv = Vector512.Load(x + c);
                a0 = Vector512.FusedMultiplyAdd(Load16(r0 + c), xv, a0);
                a1 = Vector512.FusedMultiplyAdd(Load16(r1 + c), xv, a1);
                a2 = Vector512.FusedMultiplyAdd(Load16(r2 + c), xv, a2);
                a3 = Vector512.FusedMultiplyAdd(Load16(r3 + c), xv, a3);
            }
            (d0, d1, d2, d3) = (Vector512.Sum(a0), Vector512.Sum(a1), Vector512.Sum(a2), Vector512.Sum(a3));
        }
        else if (path is KernelPath.Vector256 or KernelPath.Vector512 && n >= 8)
        {
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; c <= n - 8; c += 8)
            {
                var xv = Vector256.Load(x + c);
                a0 = Vector256.FusedMultiplyAdd(Load8(r0 + c), xv, a0);
                a1 = Vector256.FusedMultiplyAdd(Load8(r1 + c), xv, a1);
                a2 = Vector256.FusedMultiplyAdd(Load8(r2 + c), xv, a2);
                a3 = Vector256.FusedMultiplyAdd(Load8(r3 + c), xv, a3);
            }
            (d0, d1, d2, d3) = (Vector256.Sum(a0), Vector256.Sum(a1), Vector256.Sum(a2), Vector256.Sum(a3));
        }
        for (; c < n; c++)
        {
            float xc = x[c];
            d0 += ToSingle(r0[c]) * xc;
            d1 += ToSingle(r1[c]) * xc;
            d2 += ToSingle(r2[c]) * xc;
            d3 += ToSingle(r3[c]) * xc;
        }
    }
}
