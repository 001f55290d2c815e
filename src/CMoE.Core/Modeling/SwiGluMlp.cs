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

    /// <summary>Creates the block with uninitialised weights (they are loaded from a checkpoint).</summary>
    public SwiGluMlp(long hidden, long intermediate, ScalarType dtype = ScalarType.Float32) : base(nameof(SwiGluMlp))
    {
        gate_proj = new Projection(hidden, intermediate, dtype: dtype);
        up_proj = new Projection(hidden, intermediate, dtype: dtype);
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
        var h = F.silu(gate_proj.forward(x)) * up_proj.forward(x);   // [..., d_h]
        return down_proj.forward(h).MoveToOuterDisposeScope();       // [..., d]
    }
}
