using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using CMoE.Modeling.Weights;

namespace CMoE.Modeling.Kernels;

/// <summary>
/// Y = X W^T for int8 weights and many tokens (prefill): every token's row of X is quantized like the decode kernels do
/// (<see cref="QuantizedVector"/>), then each output is sum_g s_w[o, g] s_x[t, g] sum_{i in g} q_w[o, i] q_x[t, i] with exact
/// int32 group sums. With AVX-VNNI, tiles of 3 weight rows x 3 tokens keep nine int32 accumulators in registers (each 32-byte
/// weight chunk, read as w + 128 with one XOR, serves three tokens; each token chunk serves three rows; the offset is taken
/// back per group from the token's 16 * sum(q_x), as in <see cref="Int8Rows"/>), and tokens go in panels that stay in the L2
/// cache while every weight row streams past once per panel; rows are shared among the <see cref="WorkerPool"/>'s threads.
/// Without VNNI each token's row takes the decode kernels (<see cref="Int8Rows"/>).
/// </summary>
internal static unsafe class Int8Gemm
{
    private const int Panel = 48;   // tokens per panel: 48 x 4096 bytes of quantized activations fit in L2 beside the weight rows

    /// <summary>y[t * ldy + o] = sum_i x[t * cols + i] w[o, i] for t in [0, tokens), o in [0, rows).</summary>
    public static void Run(in MatrixView w, float* x, int tokens, float* y, int ldy)
    {
        long bytes = QuantizedMatrix.ScratchBytes(tokens, w.Cols, w.Group);
        if (bytes > Array.MaxLength) throw new ArgumentException($"{tokens} tokens of {w.Cols} values are too many for one product; split the batch.");
        byte[] rented = ArrayPool<byte>.Shared.Rent((int)bytes);
        try
        {
            fixed (byte* scratch = rented)
            {
                var q = QuantizedMatrix.Quantize(x, tokens, w.Cols, w.Group, scratch);
                var job = new Job { W = w, Q = q, Y = y, Ldy = ldy };
                long shares = w.Bytes * Math.Max(1, tokens / 4) / MatVec.BytesPerThread;
                WorkerPool.Shared.Run(&Rows, &job, w.Rows, granularity: 3, maxThreads: (int)Math.Clamp(shares, 1, int.MaxValue));
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private struct Job
    {
        public MatrixView W;
        public QuantizedMatrix Q;
        public float* Y;
        public int Ldy;
    }

    private static void Rows(void* args, int start, int end)
    {
        var job = (Job*)args;
        ref readonly var w = ref job->W;
        ref readonly var q = ref job->Q;
        if (!AvxVnni.IsSupported || KernelPaths.Int8 != KernelPath.Vnni256)
        {
            for (int t = 0; t < q.Tokens; t++) Int8Rows.Run(w, start, end, q.Token(t), job->Y + (long)t * job->Ldy, false, 1f);
            return;
        }
        for (int panel = 0; panel < q.Tokens; panel += Panel)
        {
            int panelEnd = Math.Min(q.Tokens, panel + Panel);
            int r = start;
            for (; r + 3 <= end; r += 3)
            {
                int t = panel;
                for (; t + 3 <= panelEnd; t += 3) Tile3x3(w, r, q, t, job->Y, job->Ldy);
                for (; t < panelEnd; t++)
                    Int8Rows.Run(w, r, r + 3, q.Token(t), job->Y + (long)t * job->Ldy, false, 1f);
            }
            if (r < end)
                for (int t = panel; t < panelEnd; t++) Int8Rows.Run(w, r, end, q.Token(t), job->Y + (long)t * job->Ldy, false, 1f);
        }
    }

    /// <summary>Rows r..r+2 against tokens t..t+2.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile3x3(in MatrixView w, int r, in QuantizedMatrix q, int t, float* y, int ldy)
    {
        int cols = w.Cols, group = w.Group, groups = cols / group;
        byte* w0 = (byte*)w.Values + (long)r * cols, w1 = w0 + cols, w2 = w1 + cols;
        float* s0 = w.Scales + (long)r * groups, s1 = s0 + groups, s2 = s1 + groups;
        sbyte* x0 = q.Values + (long)t * cols, x1 = x0 + cols, x2 = x1 + cols;
        var flip = Vector256.Create((byte)0x80);
        Vector256<float> f00 = default, f01 = default, f02 = default, f10 = default, f11 = default, f12 = default, f20 = default, f21 = default, f22 = default;
        for (int g = 0, off = 0; g < groups; g++)
        {
            Vector256<int> i00 = default, i01 = default, i02 = default, i10 = default, i11 = default, i12 = default, i20 = default, i21 = default, i22 = default;
            for (int stop = off + group; off < stop; off += 32)
            {
                var a0 = Vector256.Load(x0 + off);
                var a1 = Vector256.Load(x1 + off);
                var a2 = Vector256.Load(x2 + off);
                var b = Vector256.Load(w0 + off) ^ flip;
                i00 = AvxVnni.MultiplyWideningAndAdd(i00, b, a0);
                i01 = AvxVnni.MultiplyWideningAndAdd(i01, b, a1);
                i02 = AvxVnni.MultiplyWideningAndAdd(i02, b, a2);
                b = Vector256.Load(w1 + off) ^ flip;
                i10 = AvxVnni.MultiplyWideningAndAdd(i10, b, a0);
                i11 = AvxVnni.MultiplyWideningAndAdd(i11, b, a1);
                i12 = AvxVnni.MultiplyWideningAndAdd(i12, b, a2);
                b = Vector256.Load(w2 + off) ^ flip;
                i20 = AvxVnni.MultiplyWideningAndAdd(i20, b, a0);
                i21 = AvxVnni.MultiplyWideningAndAdd(i21, b, a1);
                i22 = AvxVnni.MultiplyWideningAndAdd(i22, b, a2);
            }
            // Per token: its offset correction and scale; per row: its scale. f += (i - offset_t) * s_x[t] * s_w[r].
            int tg = t * groups + g;
            Vector256<int> o0 = Vector256.Create(q.Offsets[tg]), o1 = Vector256.Create(q.Offsets[tg + groups]), o2 = Vector256.Create(q.Offsets[tg + 2 * groups]);
            float sx0 = q.Scales[tg], sx1 = q.Scales[tg + groups], sx2 = q.Scales[tg + 2 * groups];
            float sw0 = s0[g], sw1 = s1[g], sw2 = s2[g];
            f00 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i00 - o0), Vector256.Create(sw0 * sx0), f00);
            f01 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i01 - o1), Vector256.Create(sw0 * sx1), f01);
            f02 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i02 - o2), Vector256.Create(sw0 * sx2), f02);
            f10 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i10 - o0), Vector256.Create(sw1 * sx0), f10);
            f11 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i11 - o1), Vector256.Create(sw1 * sx1), f11);
            f12 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i12 - o2), Vector256.Create(sw1 * sx2), f12);
            f20 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i20 - o0), Vector256.Create(sw2 * sx0), f20);
            f21 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i21 - o1), Vector256.Create(sw2 * sx1), f21);
            f22 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(i22 - o2), Vector256.Create(sw2 * sx2), f22);
        }
        float* y0 = y + (long)t * ldy + r, y1 = y0 + ldy, y2 = y1 + ldy;
        y0[0] = Vector256.Sum(f00); y1[0] = Vector256.Sum(f01); y2[0] = Vector256.Sum(f02);
        y0[1] = Vector256.Sum(f10); y1[1] = Vector256.Sum(f11); y2[1] = Vector256.Sum(f12);
        y0[2] = Vector256.Sum(f20); y1[2] = Vector256.Sum(f21); y2[2] = Vector256.Sum(f22);
    }
}

/// <summary>
/// Many activation rows quantized for <see cref="Int8Gemm"/>, row by row as <see cref="QuantizedVector"/> does: q [tokens, cols],
/// one scale and one offset (16 * sum of q) per group of each row. Memory belongs to the caller.
/// </summary>
internal readonly unsafe struct QuantizedMatrix
{
    public readonly sbyte* Values;
    public readonly float* Scales;
    public readonly int* Offsets;
    public readonly int Tokens, Cols, Group;
    private readonly byte* _abs;
    private readonly sbyte* _negative;

    private QuantizedMatrix(sbyte* values, float* scales, int* offsets, byte* abs, sbyte* negative, int tokens, int cols, int group)
    {
        Values = values;
        Scales = scales;
        Offsets = offsets;
        _abs = abs;
        _negative = negative;
        (Tokens, Cols, Group) = (tokens, cols, group);
    }

    /// <summary>Quantizes x [tokens, cols] into <paramref name="scratch"/> (tokens * (3 cols + 8 cols / group) + 64 bytes).</summary>
    public static QuantizedMatrix Quantize(float* x, int tokens, int cols, int group, byte* scratch)
    {
        int groups = cols / group;
        sbyte* values = (sbyte*)scratch;
        byte* abs = scratch + (long)tokens * cols;
        sbyte* negative = (sbyte*)(abs + (long)tokens * cols);
        float* scales = (float*)(((nint)(negative + (long)tokens * cols) + 63) & ~(nint)63);
        int* offsets = (int*)(scales + (long)tokens * groups);
        for (int t = 0; t < tokens; t++)
            QuantizedVector.QuantizeInto(x + (long)t * cols, cols, group, values + (long)t * cols, abs + (long)t * cols,
                negative + (long)t * cols, scales + (long)t * groups, offsets + (long)t * groups);
        return new QuantizedMatrix(values, scales, offsets, abs, negative, tokens, cols, group);
    }

    /// <summary>Bytes of scratch <see cref="Quantize"/> needs.</summary>
    public static long ScratchBytes(int tokens, int cols, int group) => (long)tokens * (3 * cols + 8 * (cols / group)) + 128;

    /// <summary>Token <paramref name="t"/>'s row as a <see cref="QuantizedVector"/>.</summary>
    public QuantizedVector Token(int t)
    {
        int groups = Cols / Group;
        return new QuantizedVector(Values + (long)t * Cols, Offsets + (long)t * groups, _abs + (long)t * Cols, _negative + (long)t * Cols,
            Scales + (long)t * groups, Cols, Group);
    }
}
