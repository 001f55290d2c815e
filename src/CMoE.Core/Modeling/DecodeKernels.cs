using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TorchSharp.torch;
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;

namespace CMoE.Modeling;

/// <summary>
/// Managed matrix-vector kernels for decoding a few tokens on the CPU in fp32, reading the weights straight from
/// their tensors' memory. A SwiGLU FFN on one token is three matrix-vector products and an elementwise product; as
/// tensor operations that is ~6 dispatches per dense FFN and ~20 per carved one, whose fixed cost dominates a decode
/// step of a small model. Dense (<see cref="SwiGluMlp"/>) and carved (<see cref="MoE.ManagedMoeDecoder"/>) FFNs
/// both use these kernels, so the carved speed-up measured against dense comes from the experts it skips.
/// </summary>
internal static unsafe class DecodeKernels
{
    /// <summary>Inputs of at most this many tokens take the managed decode paths (larger ones are matrix products).</summary>
    public const int MaxTokens = 4;

    /// <summary>Scratch of up to this many floats lives on the stack (64 KB); larger comes from the array pool.</summary>
    public const int StackFloats = 16 * 1024;

    private const long ParallelElements = 1 << 18;   // matrices from this size are split across torch's threads

    /// <summary>
    /// Whether <paramref name="x"/> [..., <paramref name="hidden"/>] can take a managed decode path: fp32, CPU, contiguous,
    /// at most <paramref name="maxTokens"/> rows and no gradient wanted.
    /// </summary>
    public static bool Qualifies(Tensor x, long hidden, int maxTokens)
    {
        if (x.dtype != ScalarType.Float32 || x.device_type != TorchSharp.DeviceType.CPU || !x.is_contiguous()) return false;
        long n = x.numel() / hidden;
        return n > 0 && n <= maxTokens && !(x.requires_grad && is_grad_enabled());
    }

    /// <summary>Whether every tensor is fp32, on the CPU and contiguous (so <see cref="Pointer"/> may read it).</summary>
    public static bool Readable(params Tensor[] tensors) =>
        tensors.All(t => t.dtype == ScalarType.Float32 && t.device_type == TorchSharp.DeviceType.CPU && t.is_contiguous());

    /// <summary>The first element of a contiguous fp32 CPU tensor; valid while the tensor's storage lives.</summary>
    public static float* Pointer(Tensor t)
    {
        fixed (byte* p = t.bytes) return (float*)p;     // native memory: the pointer outlives the fixed block
    }

    /// <summary>A contiguous fp32 CPU tensor's elements.</summary>
    public static Span<float> Floats(Tensor t) => MemoryMarshal.Cast<byte, float>(t.bytes);

    /// <summary>
    /// One token through a SwiGLU FFN of width <paramref name="n"/>: y = W_down (SiLU(W_gate x) * (W_up x)) when
    /// <paramref name="scale"/> is null, else y += scale * that. <paramref name="gateUp"/> is W_gate|W_up [2n, d],
    /// <paramref name="down"/> W_down [d, n] (row-major), <paramref name="scratch"/> at least 2n floats.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // hot numeric loop: fully optimised from the first call
    public static void SwiGlu(float* gateUp, float* down, int n, ReadOnlySpan<float> x, Span<float> y, float? scale, Span<float> scratch)
    {
        var h = scratch[..(2 * n)];
        MatVec(gateUp, 2 * n, x.Length, x, h, null);                                   // W_gate x | W_up x
        SiluProduct(h, n);
        MatVec(down, y.Length, n, h[..n], y, scale);                                   // (y +=) scale W_down h
    }

    /// <summary>h[..n] = SiLU(h[..n]) * h[n..2n] (gate half, then up half); the up half is overwritten.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // hot numeric loop: fully optimised from the first call
    public static void SiluProduct(Span<float> h, int n)
    {
        var g = h[..n];
        var u = h.Slice(n, n);
        TensorPrimitives.Multiply(u, g, u);       // u * g
        TensorPrimitives.Sigmoid(g, g);           // sigmoid(g)
        TensorPrimitives.Multiply(g, u, g);       // g sigmoid(g) u
    }

    /// <summary>
    /// y[i] = w[i, :] . x (<paramref name="scale"/> null) or y[i] += scale * (w[i, :] . x), w row-major [rows, cols];
    /// split across threads for large matrices when torch runs with more than one thread.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // hot numeric loop: fully optimised from the first call
    public static void MatVec(float* w, int rows, int cols, ReadOnlySpan<float> x, Span<float> y, float? scale)
    {
        int threads = (long)rows * cols >= ParallelElements ? Math.Min(get_num_threads(), rows) : 1;
        if (threads <= 1)
        {
            Rows(w, 0, rows, cols, x, y, scale);
            return;
        }
        fixed (float* xp = x)
        fixed (float* yp = y)
        {
            nint xa = (nint)xp, ya = (nint)yp, wa = (nint)w;
            int chunk = (rows + threads - 1) / threads;
            Parallel.For(0, threads, c =>
            {
                int start = c * chunk, end = Math.Min(rows, start + chunk);
                if (start < end)
                    Rows((float*)wa, start, end, cols, new ReadOnlySpan<float>((float*)xa, cols), new Span<float>((float*)ya, rows), scale);
            });
        }
    }

    /// <summary>
    /// Rows [start, end) of the product, four rows at a time: each x vector load serves four weight rows, four
    /// independent accumulators, and the next four rows are prefetched while these compute. On weights that are not in
    /// cache (the normal case in a decode step) per-row library dot products ran ~6x slower than this here, and the
    /// prefetch alone gave ~1.8x (docs/benchmarks.md, "Decode kernels").
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // hot numeric loop: fully optimised from the first call
    private static void Rows(float* w, int start, int end, int cols, ReadOnlySpan<float> x, Span<float> y, float? scale)
    {
        fixed (float* xp = x)
        {
            int i = start;
            for (; i + 4 <= end; i += 4)
            {
                float* r = w + (long)i * cols;
                if (i + 8 <= end) Prefetch(r + 4L * cols, 4 * cols);                         // the next four rows, while these compute
                Dot4(r, r + cols, r + 2 * cols, r + 3 * cols, xp, cols, out float d0, out float d1, out float d2, out float d3);
                Store(y, i, d0, scale);
                Store(y, i + 1, d1, scale);
                Store(y, i + 2, d2, scale);
                Store(y, i + 3, d3, scale);
            }
            for (; i < end; i++) Store(y, i, Dot(w + (long)i * cols, xp, cols), scale);
        }
    }

    /// <summary>Asks the cache for <paramref name="floats"/> floats from <paramref name="p"/> (x86; a no-op elsewhere).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Prefetch(float* p, int floats)
    {
        if (!Sse.IsSupported) return;
        byte* b = (byte*)p;
        for (long o = 0; o < floats * 4L; o += 64) Sse.Prefetch0(b + o);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(Span<float> y, int i, float dot, float? scale) => y[i] = scale is { } g ? y[i] + g * dot : dot;

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

    /// <summary>
    /// Rotary embedding of one head in place, Hugging Face "rotate_half" layout: v = v cos + rotate_half(v) sin, where
    /// rotate_half(v) = (-v[half..], v[..half]).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // hot numeric loop: fully optimised from the first call
    public static void Rotate(Span<float> v, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int half = v.Length / 2;
        for (int i = 0; i < half; i++)
        {
            float a = v[i], b = v[i + half];
            v[i] = a * cos[i] - b * sin[i];
            v[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    }

    /// <summary>
    /// The query heads of one KV group against the group's cached keys and values: for each head h,
    /// out_h = softmax(K q_h / sqrt(head_dim)) V, with K and V row-major [positions, head_dim]. One pass over K and one
    /// over V serve every head of the group. <paramref name="q"/> and <paramref name="output"/> hold the heads side by
    /// side ([heads * head_dim]); <paramref name="scores"/> needs heads * positions floats.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // hot numeric loop: fully optimised from the first call
    public static void AttendGroup(ReadOnlySpan<float> q, int heads, float* keys, float* values, int positions, Span<float> output, Span<float> scores)
    {
        int hd = q.Length / heads;
        float scale = 1f / MathF.Sqrt(hd);
        fixed (float* sp = scores)
        fixed (float* op = output)
        {
            for (int h = 0; h < heads; h++)
            {
                var s = scores.Slice(h * positions, positions);
                Rows(keys, 0, positions, hd, q.Slice(h * hd, hd), s, null);                // K q_h (the group's K stays in cache)
                TensorPrimitives.Multiply(s, scale, s);
                TensorPrimitives.Subtract(s, TensorPrimitives.Max<float>(s), s);          // softmax, shifted by its max
                TensorPrimitives.Exp(s, s);
                TensorPrimitives.Multiply(s, 1f / TensorPrimitives.Sum<float>(s), s);
            }
            output[..(heads * hd)].Clear();
            for (int h = 0; h < heads; h++)                                                // out_h = V^T p_h, four positions a pass
            {
                float* sh = sp + h * positions, oh = op + h * hd;
                int p = 0;
                for (; p + 4 <= positions; p += 4)
                {
                    float* v = values + (long)p * hd;
                    AddScaled4(sh[p], sh[p + 1], sh[p + 2], sh[p + 3], v, v + hd, v + 2 * hd, v + 3 * hd, oh, hd);
                }
                for (; p < positions; p++) AddScaled(sh[p], values + (long)p * hd, oh, hd);
            }
        }
    }

    /// <summary>y += a0 x0 + a1 x1 + a2 x2 + a3 x3 over n floats (one load and store of y for four rows).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddScaled4(float a0, float a1, float a2, float a3, float* x0, float* x1, float* x2, float* x3, float* y, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            Vector512<float> b0 = Vector512.Create(a0), b1 = Vector512.Create(a1), b2 = Vector512.Create(a2), b3 = Vector512.Create(a3);
            for (; i <= n - 16; i += 16)
            {
                var acc = Vector512.FusedMultiplyAdd(b0, Vector512.Load(x0 + i), Vector512.Load(y + i));
                acc = Vector512.FusedMultiplyAdd(b1, Vector512.Load(x1 + i), acc);
                acc = Vector512.FusedMultiplyAdd(b2, Vector512.Load(x2 + i), acc);
                Vector512.FusedMultiplyAdd(b3, Vector512.Load(x3 + i), acc).Store(y + i);
            }
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            Vector256<float> b0 = Vector256.Create(a0), b1 = Vector256.Create(a1), b2 = Vector256.Create(a2), b3 = Vector256.Create(a3);
            for (; i <= n - 8; i += 8)
            {
                var acc = Vector256.FusedMultiplyAdd(b0, Vector256.Load(x0 + i), Vector256.Load(y + i));
                acc = Vector256.FusedMultiplyAdd(b1, Vector256.Load(x1 + i), acc);
                acc = Vector256.FusedMultiplyAdd(b2, Vector256.Load(x2 + i), acc);
                Vector256.FusedMultiplyAdd(b3, Vector256.Load(x3 + i), acc).Store(y + i);
            }
        }
        for (; i < n; i++) y[i] += a0 * x0[i] + a1 * x1[i] + a2 * x2[i] + a3 * x3[i];
    }

    /// <summary>a . b over n floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot(float* a, float* b, int n)
    {
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            var acc = Vector512<float>.Zero;
            for (; i <= n - 16; i += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), acc);
            sum = Vector512.Sum(acc);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var acc = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), acc);
            sum = Vector256.Sum(acc);
        }
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }

    /// <summary>y += alpha x over n floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddScaled(float alpha, float* x, float* y, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            var a = Vector512.Create(alpha);
            for (; i <= n - 16; i += 16) Vector512.FusedMultiplyAdd(a, Vector512.Load(x + i), Vector512.Load(y + i)).Store(y + i);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var a = Vector256.Create(alpha);
            for (; i <= n - 8; i += 8) Vector256.FusedMultiplyAdd(a, Vector256.Load(x + i), Vector256.Load(y + i)).Store(y + i);
        }
        for (; i < n; i++) y[i] += alpha * x[i];
    }
}
