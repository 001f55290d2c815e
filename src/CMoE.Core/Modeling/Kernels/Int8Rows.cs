using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace CMoE.Modeling.Kernels;

/// <summary>
/// Rows [start, end) of y = W x for int8 weights (one fp32 scale per group of G columns of a row, see
/// <see cref="Weights.WeightKind.Int8"/>): x is quantized the same way per group (<see cref="QuantizedVector"/>), the
/// products of each group are summed exactly in int32, and the group sums are scaled and accumulated in fp32:
/// y_r = sum_g s_w[r, g] s_x[g] sum_{i in g} q_w[r, i] q_x[i] (what llama.cpp's Q8_0 x Q8_0 dot product computes).
/// The byte products need one unsigned operand: |q_x| is, and the sign of q_x moves to the weight
/// ((w XOR m) - m negates w where m = -1, i.e. where x &lt; 0; |w| &lt;= 127 so it never overflows).
/// Paths: 256-bit VNNI (vpdpbusd), AVX-512BW and AVX2 byte products (vpmaddubsw + vpmaddwd, exact: a pair sum is at most
/// 2 * 127 * 127 &lt; 32767), scalar; all tested against the scalar reference.
/// </summary>
internal static unsafe class Int8Rows
{
    /// <summary>Runs rows [start, end) of <paramref name="w"/> against the quantized <paramref name="x"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(in MatrixView w, int start, int end, in QuantizedVector x, float* y, bool accumulate, float scale)
    {
        var path = KernelPaths.Int8;
        int cols = w.Cols, groups = cols / w.Group;
        sbyte* values = (sbyte*)w.Values;
        int i = start, ahead = KernelMath.PrefetchRows(cols);
        for (; i + 4 <= end; i += 4)
        {
            sbyte* r = values + (long)i * cols;
            float* s = w.Scales + (long)i * groups;
            if (i + ahead + 4 <= end) KernelMath.Prefetch(r + (long)ahead * cols, 4L * cols);
            Dot4(path, r, cols, s, groups, x, out float d0, out float d1, out float d2, out float d3);
            KernelMath.Store(y, i, d0, accumulate, scale);
            KernelMath.Store(y, i + 1, d1, accumulate, scale);
            KernelMath.Store(y, i + 2, d2, accumulate, scale);
            KernelMath.Store(y, i + 3, d3, accumulate, scale);
        }
        for (; i < end; i++)
            KernelMath.Store(y, i, ScalarDot(values + (long)i * cols, w.Scales + (long)i * groups, x), accumulate, scale);
    }

    /// <summary>Four consecutive rows (row k at <paramref name="r"/> + k * stride, scales at <paramref name="s"/> + k * groups).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4(KernelPath path, sbyte* r, int stride, float* s, int groups, in QuantizedVector x,
        out float d0, out float d1, out float d2, out float d3)
    {
        switch (path)
        {
            case KernelPath.Vnni256 when AvxVnni.IsSupported:
                Vnni4(r, stride, s, groups, x, out d0, out d1, out d2, out d3);
                return;
            case KernelPath.Vector512 when Avx512BW.IsSupported:
                Bw512x4(r, stride, s, groups, x, out d0, out d1, out d2, out d3);
                return;
            case KernelPath.Vector256 when Avx2.IsSupported:
                Avx2x4(r, stride, s, groups, x, out d0, out d1, out d2, out d3);
                return;
            default:
                d0 = ScalarDot(r, s, x);
                d1 = ScalarDot(r + stride, s + groups, x);
                d2 = ScalarDot(r + 2 * stride, s + 2 * groups, x);
                d3 = ScalarDot(r + 3 * stride, s + 3 * groups, x);
                return;
        }
    }

    /// <summary>The reference: exact int32 group sums, scaled and summed in fp32 in group order.</summary>
    public static float ScalarDot(sbyte* w, float* ws, in QuantizedVector x)
    {
        int group = x.Group, groups = x.Length / group;
        float sum = 0;
        for (int g = 0; g < groups; g++)
        {
            int dot = 0;
            for (int i = g * group; i < (g + 1) * group; i++)
                dot += x.Abs[i] * (x.Negative[i] != 0 ? -w[i] : w[i]);
            sum += dot * (ws[g] * x.Scales[g]);
        }
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<sbyte> Signed(sbyte* w, Vector256<sbyte> m) => (Vector256.Load(w) ^ m) - m;

    /// <summary>
    /// VNNI with offset weights: vpdpbusd multiplies unsigned by signed bytes, so the weight byte is read as w + 128
    /// (w XOR 0x80) against the signed q_x; the group's dot product is then the sum over lanes minus 128 * sum(q_x), taken
    /// as 16 * sum(q_x) from each of the 8 lanes (<see cref="QuantizedVector.Offsets"/>). One XOR per 32 weight bytes instead
    /// of moving signs, and two accumulators per row so consecutive products do not wait on each other.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Vnni4(sbyte* r, int stride, float* s, int groups, in QuantizedVector x,
        out float d0, out float d1, out float d2, out float d3)
    {
        int group = x.Group;
        sbyte* xq = x.Signed;
        var flip = Vector256.Create((byte)0x80);
        Vector256<float> f0 = default, f1 = default, f2 = default, f3 = default;
        byte* r0 = (byte*)r, r1 = r0 + stride, r2 = r1 + stride, r3 = r2 + stride;
        for (int g = 0, off = 0; g < groups; g++)
        {
            Vector256<int> i0 = default, i1 = default, i2 = default, i3 = default;
            int end = off + group;
            if (group >= 64)
            {
                Vector256<int> j0 = default, j1 = default, j2 = default, j3 = default;
                for (; off < end; off += 64)
                {
                    var a = Vector256.Load(xq + off);
                    var b = Vector256.Load(xq + off + 32);
                    i0 = AvxVnni.MultiplyWideningAndAdd(i0, Vector256.Load(r0 + off) ^ flip, a);
                    i1 = AvxVnni.MultiplyWideningAndAdd(i1, Vector256.Load(r1 + off) ^ flip, a);
                    i2 = AvxVnni.MultiplyWideningAndAdd(i2, Vector256.Load(r2 + off) ^ flip, a);
                    i3 = AvxVnni.MultiplyWideningAndAdd(i3, Vector256.Load(r3 + off) ^ flip, a);
                    j0 = AvxVnni.MultiplyWideningAndAdd(j0, Vector256.Load(r0 + off + 32) ^ flip, b);
                    j1 = AvxVnni.MultiplyWideningAndAdd(j1, Vector256.Load(r1 + off + 32) ^ flip, b);
                    j2 = AvxVnni.MultiplyWideningAndAdd(j2, Vector256.Load(r2 + off + 32) ^ flip, b);
                    j3 = AvxVnni.MultiplyWideningAndAdd(j3, Vector256.Load(r3 + off + 32) ^ flip, b);
                }
                (i0, i1, i2, i3) = (i0 + j0, i1 + j1, i2 + j2, i3 + j3);
            }
            else
            {
                var a = Vector256.Load(xq + off);
                i0 = AvxVnni.MultiplyWideningAndAdd(i0, Vector256.Load(r0 + off) ^ flip, a);
                i1 = AvxVnni.MultiplyWideningAndAdd(i1, Vector256.Load(r1 + off) ^ flip, a);
                i2 = AvxVnni.MultiplyWideningAndAdd(i2, Vector256.Load(r2 + off) ^ flip, a);
                i3 = AvxVnni.MultiplyWideningAndAdd(i3, Vector256.Load(r3 + off) ^ flip, a);
                off = end;
            }
            var offset = Vector256.Create(x.Offsets[g]);
            float sx = x.Scales[g];
            f0 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i0 - offset), Vector256.Create(s[g] * sx), f0);
            f1 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i1 - offset), Vector256.Create(s[groups + g] * sx), f1);
            f2 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i2 - offset), Vector256.Create(s[2 * groups + g] * sx), f2);
            f3 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i3 - offset), Vector256.Create(s[3 * groups + g] * sx), f3);
        }
        (d0, d1, d2, d3) = (Vector256.Sum(f0), Vector256.Sum(f1), Vector256.Sum(f2), Vector256.Sum(f3));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> BytePairs256(Vector256<byte> a, Vector256<sbyte> w) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(a, w), Vector256<short>.One);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Avx2x4(sbyte* r, int stride, float* s, int groups, in QuantizedVector x,
        out float d0, out float d1, out float d2, out float d3)
    {
        int group = x.Group;
        byte* xa = x.Abs;
        sbyte* xn = x.Negative;
        Vector256<float> f0 = default, f1 = default, f2 = default, f3 = default;
        for (int g = 0, off = 0; g < groups; g++)
        {
            Vector256<int> i0 = default, i1 = default, i2 = default, i3 = default;
            for (int end = off + group; off < end; off += 32)
            {
                var a = Vector256.Load(xa + off);
                var m = Vector256.Load(xn + off);
                i0 += BytePairs256(a, Signed(r + off, m));
                i1 += BytePairs256(a, Signed(r + stride + off, m));
                i2 += BytePairs256(a, Signed(r + 2 * stride + off, m));
                i3 += BytePairs256(a, Signed(r + 3 * stride + off, m));
            }
            float sx = x.Scales[g];
            f0 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i0), Vector256.Create(s[g] * sx), f0);
            f1 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i1), Vector256.Create(s[groups + g] * sx), f1);
            f2 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i2), Vector256.Create(s[2 * groups + g] * sx), f2);
            f3 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i3), Vector256.Create(s[3 * groups + g] * sx), f3);
        }
        (d0, d1, d2, d3) = (Vector256.Sum(f0), Vector256.Sum(f1), Vector256.Sum(f2), Vector256.Sum(f3));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> BytePairs512(Vector512<byte> a, Vector512<sbyte> w) =>
        Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(a, w), Vector512<short>.One);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<sbyte> Signed512(sbyte* w, Vector512<sbyte> m) => (Vector512.Load(w) ^ m) - m;

    /// <summary>AVX-512BW: 64 bytes per step; a step covers two groups of 32 (scales per 256-bit half) or part of a larger group.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Bw512x4(sbyte* r, int stride, float* s, int groups, in QuantizedVector x,
        out float d0, out float d1, out float d2, out float d3)
    {
        int group = x.Group;
        byte* xa = x.Abs;
        sbyte* xn = x.Negative;
        Vector512<float> f0 = default, f1 = default, f2 = default, f3 = default;
        int cols = groups * group;
        if (group == 32)
        {
            int off = 0, g = 0;
            for (; off + 64 <= cols; off += 64, g += 2)
            {
                var a = Vector512.Load(xa + off);
                var m = Vector512.Load(xn + off);
                float sx0 = x.Scales[g], sx1 = x.Scales[g + 1];
                f0 = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(BytePairs512(a, Signed512(r + off, m))), Pair(s[g] * sx0, s[g + 1] * sx1), f0);
                f1 = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(BytePairs512(a, Signed512(r + stride + off, m))), Pair(s[groups + g] * sx0, s[groups + g + 1] * sx1), f1);
                f2 = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(BytePairs512(a, Signed512(r + 2 * stride + off, m))), Pair(s[2 * groups + g] * sx0, s[2 * groups + g + 1] * sx1), f2);
                f3 = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(BytePairs512(a, Signed512(r + 3 * stride + off, m))), Pair(s[3 * groups + g] * sx0, s[3 * groups + g + 1] * sx1), f3);
            }
            (d0, d1, d2, d3) = (Vector512.Sum(f0), Vector512.Sum(f1), Vector512.Sum(f2), Vector512.Sum(f3));
            if (off < cols)                                                     // an odd number of groups: the last one in 256 bits
            {
                var a = Vector256.Load(xa + off);
                var m = Vector256.Load(xn + off);
                float sx = x.Scales[g];
                d0 += Vector256.Sum(Vector256.ConvertToSingle(BytePairs256(a, Signed(r + off, m)))) * (s[g] * sx);
                d1 += Vector256.Sum(Vector256.ConvertToSingle(BytePairs256(a, Signed(r + stride + off, m)))) * (s[groups + g] * sx);
                d2 += Vector256.Sum(Vector256.ConvertToSingle(BytePairs256(a, Signed(r + 2 * stride + off, m)))) * (s[2 * groups + g] * sx);
                d3 += Vector256.Sum(Vector256.ConvertToSingle(BytePairs256(a, Signed(r + 3 * stride + off, m)))) * (s[3 * groups + g] * sx);
            }
            return;
        }
        for (int g = 0, off = 0; g < groups; g++)
        {
            Vector512<int> i0 = default, i1 = default, i2 = default, i3 = default;
            for (int end = off + group; off < end; off += 64)
            {
                var a = Vector512.Load(xa + off);
                var m = Vector512.Load(xn + off);
                i0 += BytePairs512(a, Signed512(r + off, m));
                i1 += BytePairs512(a, Signed512(r + stride + off, m));
                i2 += BytePairs512(a, Signed512(r + 2 * stride + off, m));
                i3 += BytePairs512(a, Signed512(r + 3 * stride + off, m));
            }
            float sx = x.Scales[g];
            f0 = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(i0), Vector512.Create(s[g] * sx), f0);
            f1 = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(i1), Vector512.Create(s[groups + g] * sx), f1);
            f2 = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(i2), Vector512.Create(s[2 * groups + g] * sx), f2);
            f3 = Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(i3), Vector512.Create(s[3 * groups + g] * sx), f3);
        }
        (d0, d1, d2, d3) = (Vector512.Sum(f0), Vector512.Sum(f1), Vector512.Sum(f2), Vector512.Sum(f3));
    }

    /// <summary>[a x 8 | b x 8]: the scales of two 32-byte groups in one 512-bit step.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Pair(float a, float b) => Vector512.Create(Vector256.Create(a), Vector256.Create(b));
}
