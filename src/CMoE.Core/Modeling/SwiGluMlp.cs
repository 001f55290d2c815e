using CMoE.Modeling.Kernels;
using CMoE.Modeling.Weights;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Modeling;

/// <summary>
/// The dense gated feed-forward block: y = W_down (act(W_gate x) * (W_up x)), act SiLU (SwiGLU) or tanh-GELU (GeGLU,
/// Gemma-2). The managed decode kernels implement SiLU only; a GeGLU block takes the tensor path.
/// </summary>
public sealed class SwiGluMlp : nn.Module<Tensor, Tensor>
{
    // Field names are the Hugging Face keys: mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight.
    private readonly Projection gate_proj;
    private readonly Projection up_proj;
    private readonly Projection down_proj;
    private readonly FusedWeights _gateUp;   // gate_proj and up_proj are its row ranges
    private readonly long _intermediate;

    /// <summary>Creates the block with uninitialised weights (they are loaded from a checkpoint) in <paramref name="precision"/> (fp32 when null).</summary>
    public SwiGluMlp(long hidden, long intermediate, Precision? precision = null, GatedActivation activation = GatedActivation.Silu) : base(nameof(SwiGluMlp))
    {
        Activation = activation;
        var p = precision ?? Precision.Fp32;
        _intermediate = intermediate;
        (_gateUp, var parts) = FusedWeights.Allocate(hidden, [intermediate, intermediate], p.Weights);
        gate_proj = new Projection(parts[0]);
        up_proj = new Projection(parts[1]);
        _gateUp.Bind(gate_proj.Weight, up_proj.Weight);
        down_proj = new Projection(intermediate, hidden, precision: p);
        RegisterComponents();
    }

    /// <summary>The gate's activation.</summary>
    public GatedActivation Activation { get; }

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
            var gu = gateUp.Linear(x);                                        // [..., 2 d_h]
            var g = Activation.ApplyInPlace(gu.narrow(-1, 0, _intermediate)).mul_(gu.narrow(-1, _intermediate, _intermediate)); // [..., d_h]
            return down_proj.forward(g).MoveToOuterDisposeScope();
        }
        var h = Activation.Apply(gate_proj.forward(x)) * up_proj.forward(x);   // [..., d_h]
        return down_proj.forward(h).MoveToOuterDisposeScope();       // [..., d]
    }

    private readonly PerWeights<DecodeViews> _decoder = new();

    /// <summary>The managed kernels' views of W_gate|W_up [2 d_h, d] and W_down [d, d_h].</summary>
    internal sealed record DecodeViews(MatrixView GateUp, MatrixView Down);

    /// <summary>The views the managed decode kernels read, or null when they cannot (training, adapters, a bias, other devices, split blocks).</summary>
    internal DecodeViews? Decodable()
    {
        if (Activation != GatedActivation.Silu || FusedGateUp is not { } gateUp || down_proj.Bias is not null) return null;   // kernels are SiLU
        return _decoder.Get([gate_proj.Weight, up_proj.Weight, down_proj.Weight], () =>
            MatrixView.Of(gateUp) is { } gu && MatrixView.Of(down_proj.Stored) is { } dn ? new DecodeViews(gu, dn) : null);
    }

    /// <summary>
    /// Decode path for CPU inference with fp32 activations on at most <see cref="DecodeKernels.MaxTokens"/> tokens: the FFN as
    /// managed matrix-vector products (<see cref="DecodeKernels.SwiGlu"/>) into a fresh tensor; null where it does not apply.
    /// </summary>
    internal Tensor? TryManagedForward(Tensor x)
    {
        if (Decodable() is not { } views || !DecodeKernels.Qualifies(x, views.GateUp.Cols, DecodeKernels.MaxTokens)) return null;
        var y = empty(x.shape, dtype: ScalarType.Float32);
        Decode(views, DecodeKernels.Floats(x), DecodeKernels.Floats(y));
        return y;
    }

    /// <summary>y = FFN(x) for each of the rows of <paramref name="x"/> [n * d] into <paramref name="y"/> [n * d].</summary>
    internal static void Decode(DecodeViews views, ReadOnlySpan<float> x, Span<float> y)
    {
        int d = views.GateUp.Cols, n = views.Down.Cols;
        float[]? rented = 2 * n > DecodeKernels.StackFloats ? System.Buffers.ArrayPool<float>.Shared.Rent(2 * n) : null;
        Span<float> scratch = rented ?? stackalloc float[2 * n];
        try
        {
            for (int t = 0; t < x.Length / d; t++)
                DecodeKernels.SwiGlu(views.GateUp, views.Down, x.Slice(t * d, d), y.Slice(t * d, d), false, 1f, scratch);
        }
        finally
        {
            if (rented is not null) System.Buffers.ArrayPool<float>.Shared.Return(rented);
        }
    }

    /// <summary>W_gate|W_up as one [2 d_h, d] block while both still live in it and no adapter changes them, else null.</summary>
    internal StoredWeight? FusedGateUp =>
        gate_proj.RawWeightsUsable && up_proj.RawWeightsUsable && down_proj.RawWeightsUsable ? _gateUp.TryGet([gate_proj.Weight, up_proj.Weight]) : null;

    /// <summary>W_gate|W_up [2 d_h, d] when the fused inference path applies to <paramref name="x"/>, else null.</summary>
    internal StoredWeight? RawGateUp(Tensor x)
    {
        if (!gate_proj.RawWeightsUsable || !up_proj.RawWeightsUsable) return null;
        if (!FusedWeights.NoGradNeeded(x, gate_proj.Weight) || up_proj.Weight.requires_grad) return null;
        return _gateUp.TryGet([gate_proj.Weight, up_proj.Weight]);
    }
}
