using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using CMoE.Modeling.Kernels;
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
    public static float* Pointer(Tensor t) => (float*)Address(t);

    /// <summary>The first element of a contiguous CPU tensor of any type and size; valid while the tensor's storage lives.</summary>
    public static void* Address(Tensor t)
    {
        if (t.numel() == 0) return null;
        using var first = t.view(-1).narrow(0, 0, 1);     // its bytes start where the tensor's do (whole tensors may exceed 2 GB)
        fixed (byte* p = first.bytes) return p;          // native memory: the pointer outlives the fixed block
    }

    /// <summary>A contiguous fp32 CPU tensor's elements.</summary>
    public static Span<float> Floats(Tensor t) => MemoryMarshal.Cast<byte, float>(t.bytes);

    /// <summary>
    /// One token through a SwiGLU FFN of width n: y = W_down (SiLU(W_gate x) * (W_up x)), or y += scale * that when
    /// <paramref name="accumulate"/>. <paramref name="gateUp"/> is W_gate|W_up [2n, d], <paramref name="down"/> W_down [d, n],
    /// in any weight format; <paramref name="scratch"/> holds at least 2n floats.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // hot numeric loop: fully optimised from the first call
    public static void SwiGlu(in MatrixView gateUp, in MatrixView down, ReadOnlySpan<float> x, Span<float> y, bool accumulate, float scale, Span<float> scratch)
    {
        int n = down.Cols;
        var h = scratch[..(2 * n)];
        MatVec.Run(gateUp, x, h);                                                      // W_gate x | W_up x
        SiluProduct(h, n);
        MatVec.Run(down, h[..n], y, accumulate, scale);                                // (y +=) scale W_down h
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
}
