using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Modeling;

/// <summary>The dense SwiGLU feed-forward block: y = W_down (SiLU(W_gate x) * (W_up x)).</summary>
public sealed class SwiGluMlp : nn.Module<Tensor, Tensor>
{
    // Field names are the Hugging Face keys: mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight.
    private readonly Projection gate_proj;
    private readonly Projection up_proj;
    private readonly Projection down_proj;
    private readonly FusedWeights _gateUp;   // gate_proj and up_proj are its row ranges
    private readonly long _intermediate;

    /// <summary>Creates the block with uninitialised weights (they are loaded from a checkpoint).</summary>
    public SwiGluMlp(long hidden, long intermediate, ScalarType dtype = ScalarType.Float32) : base(nameof(SwiGluMlp))
    {
        _intermediate = intermediate;
        (_gateUp, var parts) = FusedWeights.Allocate(hidden, [intermediate, intermediate], dtype);
        gate_proj = new Projection(parts[0]);
        up_proj = new Projection(parts[1]);
        _gateUp.Bind(gate_proj.Weight, up_proj.Weight);
        down_proj = new Projection(intermediate, hidden, dtype: dtype);
        RegisterComponents();
    }

    /// <summary>W_gate [d_h, d].</summary>
    public Projection Gate => gate_proj;
    /// <summary>W_up [d_h, d].</summary>
    public Projection Up => up_proj;
    /// <summary>W_down [d, d_h].</summary>
    public Projection Down => down_proj;

    /// <summary>y = W_down (SiLU(W_gate x) * (W_up x)); x [..., d] -> [..., d].</summary>
    public override Tensor forward(Tensor x)
    {
        if (TryManagedForward(x) is { } decoded) return decoded;
        using var scope = NewDisposeScope();
        if (RawGateUp(x) is { } gateUp)
        {
            // Inference fast path: one product for gate|up, SiLU and the product in place.
            var gu = F.linear(x, gateUp);                                      // [..., 2 d_h]
            var g = gu.narrow(-1, 0, _intermediate).silu_().mul_(gu.narrow(-1, _intermediate, _intermediate)); // [..., d_h]
            return down_proj.forward(g).MoveToOuterDisposeScope();
        }
        var h = F.silu(gate_proj.forward(x)) * up_proj.forward(x);   // [..., d_h]
        return down_proj.forward(h).MoveToOuterDisposeScope();       // [..., d]
    }

    private readonly PerWeights<DecoderPointers> _decoder = new();

    private sealed record DecoderPointers(nint GateUp, nint Down);

    /// <summary>
    /// Decode path for CPU fp32 inference on at most <see cref="DecodeKernels.MaxTokens"/> tokens: the FFN as managed
    /// matrix-vector products (<see cref="DecodeKernels.SwiGlu"/>) into a fresh tensor; null where it does not apply.
    /// </summary>
    internal unsafe Tensor? TryManagedForward(Tensor x)
    {
        if (FusedGateUp is not { } gateUp) return null;
        int d = (int)gateUp.shape[1], n = (int)_intermediate;
        if (!DecodeKernels.Qualifies(x, d, DecodeKernels.MaxTokens)) return null;
        var decoder = _decoder.Get([gate_proj.Weight, up_proj.Weight, down_proj.Weight], () =>
            down_proj.Bias is null && DecodeKernels.Readable(gateUp, down_proj.Weight)
                ? new((nint)DecodeKernels.Pointer(gateUp), (nint)DecodeKernels.Pointer(down_proj.Weight))
                : null);
        if (decoder is null) return null;
        var y = empty(x.shape, dtype: ScalarType.Float32);
        ReadOnlySpan<float> xs = DecodeKernels.Floats(x);
        var ys = DecodeKernels.Floats(y);
        float[]? rented = 2 * n > DecodeKernels.StackFloats ? System.Buffers.ArrayPool<float>.Shared.Rent(2 * n) : null;
        Span<float> scratch = rented ?? stackalloc float[2 * n];
        try
        {
            for (int t = 0; t < xs.Length / d; t++)
                DecodeKernels.SwiGlu((float*)decoder.GateUp, (float*)decoder.Down, n, xs.Slice(t * d, d), ys.Slice(t * d, d), null, scratch);
        }
        finally
        {
            if (rented is not null) System.Buffers.ArrayPool<float>.Shared.Return(rented);
        }
        return y;
    }

    /// <summary>W_gate|W_up as one [2 d_h, d] block while both still live in it and no adapter changes them, else null.</summary>
    internal Tensor? FusedGateUp =>
        gate_proj.RawWeightsUsable && up_proj.RawWeightsUsable && down_proj.RawWeightsUsable ? _gateUp.TryGet([gate_proj.Weight, up_proj.Weight]) : null;

    /// <summary>W_gate|W_up [2 d_h, d] when the fused inference path applies to <paramref name="x"/>, else null.</summary>
    internal Tensor? RawGateUp(Tensor x)
    {
        if (!gate_proj.RawWeightsUsable || !up_proj.RawWeightsUsable) return null;
        if (!FusedWeights.NoGradNeeded(x, gate_proj.Weight) || up_proj.Weight.requires_grad) return null;
        return _gateUp.TryGet([gate_proj.Weight, up_proj.Weight]);
    }
}
