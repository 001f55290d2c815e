using System.Buffers;
using static TorchSharp.torch;

namespace CMoE.Modeling.MoE;

/// <summary>
/// The carved FFN of one token computed in managed code, straight from the weights' memory: router products
/// G|U x, host top-a, the shared expert and each selected expert's W_gate|W_up block as matrix-vector products,
/// SiLU-product, and W_down accumulated into the output with the gate. One call replaces the ~20 small tensor
/// operations of the tensor fast path, whose dispatch cost dominates a decode step of a small model.
/// Applies to CPU fp32 weights that still live in their fused blocks (see <see cref="TryCreate"/>); the
/// block falls back to the tensor paths everywhere else (CUDA, bf16/fp16, adapters attached, training).
/// </summary>
/// <remarks>
/// The pointers stay valid while the block holds the same tensors (<see cref="Sources"/>; a move to another device or
/// dtype replaces them). In-place updates (loading, LoRA merge, balancing-bias updates) keep the storage and are seen
/// at once. Immutable, so scoring threads can share it.
/// </remarks>
internal sealed unsafe class ManagedMoeDecoder
{
    private readonly float* _router;        // [2E, d]: G rows, then U rows
    private readonly float* _bias;          // [E]
    private readonly float* _scale;         // [E]
    private readonly float* _sharedGateUp;  // [2S, d], or null
    private readonly float* _sharedDown;    // [d, S], or null
    private readonly float* _expertGateUp;  // [E, 2m, d]
    private readonly float* _expertDown;    // [E, d, m]
    private readonly int _d, _s, _e, _m;

    private ManagedMoeDecoder(float*[] p, MoeShape shape)
    {
        _router = p[0];
        _bias = p[1];
        _scale = p[2];
        _sharedGateUp = p[3];
        _sharedDown = p[4];
        _expertGateUp = p[5];
        _expertDown = p[6];
        (_d, _s, _e, _m) = (shape.Hidden, shape.SharedSize, shape.RoutedExperts, shape.ExpertSize);
    }

    /// <summary>
    /// The parameters and buffers a decoder for <paramref name="block"/> reads, in a fixed order: a decoder (or the finding that
    /// none applies) stays valid while the block holds these same tensors (see <see cref="PerWeights{T}"/>).
    /// </summary>
    public static Tensor[] Sources(MoeBlock block)
    {
        var r = block.Router;
        var x = block.Experts;
        var s = block.SharedExpert;
        return s is null
            ? [r.Gate, r.Up, r.Bias, r.Scale, x.Gate, x.Up, x.Down]
            : [r.Gate, r.Up, r.Bias, r.Scale, x.Gate, x.Up, x.Down, s.Gate.Weight, s.Up.Weight, s.Down.Weight];
    }

    /// <summary>A decoder for <paramref name="block"/>, or null when its weights are not CPU fp32 in their fused blocks.</summary>
    public static ManagedMoeDecoder? TryCreate(MoeBlock block)
    {
        var router = block.Router.FusedGateUp;
        var experts = block.Experts.FusedGateUp;
        var shared = block.SharedExpert;
        var sharedGateUp = shared?.FusedGateUp;
        if (router is null || experts is null || (shared is not null && sharedGateUp is null)) return null;
        var tensors = new List<Tensor> { router, block.Router.Bias, block.Router.Scale, experts, block.Experts.Down };
        if (shared is not null) tensors.AddRange([sharedGateUp!, shared.Down.Weight]);
        if (!DecodeKernels.Readable([.. tensors])) return null;
        var p = new float*[7];
        p[0] = DecodeKernels.Pointer(router);
        p[1] = DecodeKernels.Pointer(block.Router.Bias);
        p[2] = DecodeKernels.Pointer(block.Router.Scale);
        if (shared is not null)
        {
            p[3] = DecodeKernels.Pointer(sharedGateUp!);
            p[4] = DecodeKernels.Pointer(shared.Down.Weight);
        }
        p[5] = DecodeKernels.Pointer(experts);
        p[6] = DecodeKernels.Pointer(block.Experts.Down);
        return new ManagedMoeDecoder(p, block.Shape);
    }

    /// <summary>
    /// y = E_shared(x) + sum over the top-<paramref name="active"/> experts of g_j E_j(x) for each of the rows of
    /// <paramref name="x"/> [n * d] into <paramref name="y"/> [n * d].
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public void Forward(ReadOnlySpan<float> x, Span<float> y, int active)
    {
        int d = _d, e = _e, m = _m, s = _s;
        int scratch = 2 * Math.Max(s, m);
        float[]? rented = scratch > DecodeKernels.StackFloats ? ArrayPool<float>.Shared.Rent(scratch) : null;
        Span<float> h = rented ?? stackalloc float[scratch];
        Span<float> r = stackalloc float[2 * e];
        Span<int> selected = stackalloc int[active];
        Span<double> gates = stackalloc double[active];
        var bias = new ReadOnlySpan<float>(_bias, e);
        var scale = new ReadOnlySpan<float>(_scale, e);
        try
        {
            for (int t = 0; t < x.Length / d; t++)
            {
                var xt = x.Slice(t * d, d);
                var yt = y.Slice(t * d, d);
                DecodeKernels.MatVec(_router, 2 * e, d, xt, r, null);                            // G x | U x
                TrainingFreeRouter.SelectOnHost(r[..e], r[e..], bias, scale, selected, gates);
                if (s > 0) DecodeKernels.SwiGlu(_sharedGateUp, _sharedDown, s, xt, yt, null, h);          // y = E_shared(x)
                else yt.Clear();
                for (int k = 0; k < active; k++)
                {
                    long j = selected[k];
                    DecodeKernels.SwiGlu(_expertGateUp + j * 2 * m * d, _expertDown + j * d * m, m, xt, yt, (float)gates[k], h); // y += g_j E_j(x)
                }
            }
        }
        finally
        {
            if (rented is not null) ArrayPool<float>.Shared.Return(rented);
        }
    }
}
