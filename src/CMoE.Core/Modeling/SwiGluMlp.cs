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

    /// <summary>W_gate|W_up [2 d_h, d] when the fused inference path applies to <paramref name="x"/>, else null.</summary>
    internal Tensor? RawGateUp(Tensor x)
    {
        if (!gate_proj.RawWeightsUsable || !up_proj.RawWeightsUsable) return null;
        if (!FusedWeights.NoGradNeeded(x, gate_proj.Weight) || up_proj.Weight.requires_grad) return null;
        return _gateUp.TryGet([gate_proj.Weight, up_proj.Weight]);
    }
}
