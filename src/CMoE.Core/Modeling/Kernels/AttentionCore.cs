using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;

namespace CMoE.Modeling.Kernels;

/// <summary>
/// The attention of one decode step for the query heads of one KV group: for each head h,
/// out_h = softmax(K q_h / sqrt(head_dim)) V, with the group's cached K and V row-major [positions, head_dim].
/// At a few hundred positions this, not the projections, is most of a small model's decode step, and a dot product of
/// 64 floats per position ends in a horizontal sum that costs as much as the product. So with AVX-512 and head_dim a
/// multiple of 16, the scores of 16 positions are reduced together (four levels of two-source permutes: 15 vectors of
/// adds for 16 sums instead of 16 reductions), and V is read once for up to four heads whose outputs stay in registers.
/// Elsewhere (no AVX-512, other head sizes) a plain path computes the same values.
/// </summary>
internal static unsafe class AttentionCore
{
    /// <summary>Floats of score scratch <see cref="Group"/> needs.</summary>
    public static int ScratchFloats(int heads, int positions) => heads * ((positions + 15) & ~15);

    /// <summary>
    /// <paramref name="q"/> and <paramref name="output"/> hold the group's <paramref name="heads"/> heads side by side
    /// ([heads * head_dim]); <paramref name="scores"/> holds <see cref="ScratchFloats"/> floats.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Group(float* q, int heads, int hd, float* keys, float* values, int positions, float* output, float* scores)
    {
        int stride = (positions + 15) & ~15;
        bool wide = Avx512F.IsSupported && hd % 16 == 0 && hd <= 256 && !ForcePlain;
        float scale = 1f / MathF.Sqrt(hd);
        for (int h = 0; h < heads; h++)
        {
            float* s = scores + h * stride;
            if (wide) Scores16(q + h * hd, hd, keys, positions, s);
            else Fp32Rows.Run(keys, 0, positions, hd, q + h * hd, s, false, 1f);
            var span = new Span<float>(s, positions);
            TensorPrimitives.Multiply(span, scale, span);
            TensorPrimitives.Subtract(span, TensorPrimitives.Max<float>(span), span);     // softmax, shifted by its max
            TensorPrimitives.Exp(span, span);
            TensorPrimitives.Multiply(span, 1f / TensorPrimitives.Sum<float>(span), span);
        }
        if (wide)
            for (int h = 0; h < heads; h += 4)
                Weighted(scores + h * stride, stride, Math.Min(4, heads - h), values, positions, hd, output + h * hd);
        else
            PlainWeighted(scores, stride, heads, values, positions, hd, output);
    }

    /// <summary>Tests: take the plain path even where AVX-512 applies.</summary>
    internal static bool ForcePlain { get; set; }

    /// <summary>s[p] = k_p . q for every position, 16 positions per reduction.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Scores16(float* q, int hd, float* keys, int positions, float* s)
    {
        int chunks = hd / 16, p = 0;
        var acc = stackalloc Vector512<float>[16];
        for (; p + 16 <= positions; p += 16)
        {
            for (int j = 0; j < 16; j++)
            {
                float* k = keys + (long)(p + j) * hd;
                var a = Vector512.Load(k) * Vector512.Load(q);
                for (int c = 1; c < chunks; c++) a = Vector512.FusedMultiplyAdd(Vector512.Load(k + 16 * c), Vector512.Load(q + 16 * c), a);
                acc[j] = a;
            }
            Reduce16(acc).Store(s + p);
        }
        for (; p < positions; p++) s[p] = KernelMath.Dot(keys + (long)p * hd, q, hd);
    }

    /// <summary>The 16 lane sums of v[0..15] as one vector (lane j = sum of v[j]).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Reduce16(Vector512<float>* v)
    {
        // Level m (block sizes 8, 4, 2, 1): each output holds 2k sources of m lanes, from two inputs of k sources of 2m lanes.
        var l8 = Halves(v[0], v[1], 8, 0) + Halves(v[0], v[1], 8, 1);
        var l8b = Halves(v[2], v[3], 8, 0) + Halves(v[2], v[3], 8, 1);
        var l8c = Halves(v[4], v[5], 8, 0) + Halves(v[4], v[5], 8, 1);
        var l8d = Halves(v[6], v[7], 8, 0) + Halves(v[6], v[7], 8, 1);
        var l8e = Halves(v[8], v[9], 8, 0) + Halves(v[8], v[9], 8, 1);
        var l8f = Halves(v[10], v[11], 8, 0) + Halves(v[10], v[11], 8, 1);
        var l8g = Halves(v[12], v[13], 8, 0) + Halves(v[12], v[13], 8, 1);
        var l8h = Halves(v[14], v[15], 8, 0) + Halves(v[14], v[15], 8, 1);
        var l4a = Halves(l8, l8b, 4, 0) + Halves(l8, l8b, 4, 1);
        var l4b = Halves(l8c, l8d, 4, 0) + Halves(l8c, l8d, 4, 1);
        var l4c = Halves(l8e, l8f, 4, 0) + Halves(l8e, l8f, 4, 1);
        var l4d = Halves(l8g, l8h, 4, 0) + Halves(l8g, l8h, 4, 1);
        var l2a = Halves(l4a, l4b, 2, 0) + Halves(l4a, l4b, 2, 1);
        var l2b = Halves(l4c, l4d, 2, 0) + Halves(l4c, l4d, 2, 1);
        return Halves(l2a, l2b, 1, 0) + Halves(l2a, l2b, 1, 1);
    }

    /// <summary>
    /// From x and y, each k = 8 / m sources of 2m lanes, the first (<paramref name="half"/> 0) or second half of every
    /// source's block: x's sources in lanes 0-7, y's in 8-15, m lanes each.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Halves(Vector512<float> x, Vector512<float> y, int m, int half) =>
        Avx512F.PermuteVar16x32x2(x, HalfIndices[(m == 8 ? 0 : m == 4 ? 2 : m == 2 ? 4 : 6) + half], y);

    private static readonly Vector512<int>[] HalfIndices = BuildIndices();

    private static Vector512<int>[] BuildIndices()
    {
        var result = new Vector512<int>[8];
        int slot = 0;
        foreach (int m in new[] { 8, 4, 2, 1 })
            for (int half = 0; half < 2; half++)
            {
                var lanes = new int[16];
                for (int l = 0; l < 16; l++)
                {
                    int fromY = l / 8, source = (l % 8) / m, u = l % m;
                    lanes[l] = fromY * 16 + source * 2 * m + half * m + u;   // indices 16-31 pick from y
                }
                result[slot++] = Vector512.Create(lanes);
            }
        return result;
    }

    /// <summary>out_h = sum_p s_h[p] v_p for up to four heads, their outputs in registers, each V row read once.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Weighted(float* scores, int stride, int heads, float* values, int positions, int hd, float* output)
    {
        for (int c = 0; c < hd; c += 16)
        {
            Vector512<float> o0 = default, o1 = default, o2 = default, o3 = default;
            float* s0 = scores, s1 = scores + stride, s2 = scores + 2 * stride, s3 = scores + 3 * stride;
            float* v = values + c;
            switch (heads)
            {
                case 4:
                    for (int p = 0; p < positions; p++, v += hd)
                    {
                        var row = Vector512.Load(v);
                        o0 = Vector512.FusedMultiplyAdd(row, Vector512.Create(s0[p]), o0);
                        o1 = Vector512.FusedMultiplyAdd(row, Vector512.Create(s1[p]), o1);
                        o2 = Vector512.FusedMultiplyAdd(row, Vector512.Create(s2[p]), o2);
                        o3 = Vector512.FusedMultiplyAdd(row, Vector512.Create(s3[p]), o3);
                    }
                    break;
                case 3:
                    for (int p = 0; p < positions; p++, v += hd)
                    {
                        var row = Vector512.Load(v);
                        o0 = Vector512.FusedMultiplyAdd(row, Vector512.Create(s0[p]), o0);
                        o1 = Vector512.FusedMultiplyAdd(row, Vector512.Create(s1[p]), o1);
                        o2 = Vector512.FusedMultiplyAdd(row, Vector512.Create(s2[p]), o2);
                    }
                    break;
                case 2:
                    for (int p = 0; p < positions; p++, v += hd)
                    {
                        var row = Vector512.Load(v);
                        o0 = Vector512.FusedMultiplyAdd(row, Vector512.Create(s0[p]), o0);
                        o1 = Vector512.FusedMultiplyAdd(row, Vector512.Create(s1[p]), o1);
                    }
                    break;
                default:
                    for (int p = 0; p < positions; p++, v += hd) o0 = Vector512.FusedMultiplyAdd(Vector512.Load(v), Vector512.Create(s0[p]), o0);
                    break;
            }
            o0.Store(output + c);
            if (heads > 1) o1.Store(output + hd + c);
            if (heads > 2) o2.Store(output + 2 * hd + c);
            if (heads > 3) o3.Store(output + 3 * hd + c);
        }
    }

    /// <summary>out_h = V^T p_h, four positions a pass (any head size, any vector width).</summary>
    private static void PlainWeighted(float* scores, int stride, int heads, float* values, int positions, int hd, float* output)
    {
        new Span<float>(output, heads * hd).Clear();
        for (int h = 0; h < heads; h++)
        {
            float* sh = scores + h * stride, oh = output + h * hd;
            int p = 0;
            for (; p + 4 <= positions; p += 4)
            {
                float* v = values + (long)p * hd;
                KernelMath.AddScaled4(sh[p], sh[p + 1], sh[p + 2], sh[p + 3], v, v + hd, v + 2 * hd, v + 3 * hd, oh, hd);
            }
            for (; p < positions; p++) KernelMath.AddScaled(sh[p], values + (long)p * hd, oh, hd);
        }
    }
}
