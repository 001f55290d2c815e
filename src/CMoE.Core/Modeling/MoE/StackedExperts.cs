using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Modeling.MoE;

/// <summary>
/// The routed experts of one layer, each a SwiGLU slice of the dense FFN, stored stacked so each
/// expert's weights are one contiguous block: keys <c>gate_proj</c> [E, m, d], <c>up_proj</c> [E, m, d],
/// <c>down_proj</c> [E, d, m].
/// </summary>
public sealed class StackedExperts : nn.Module
{
    private readonly Parameter gate_proj;
    private readonly Parameter up_proj;
    private readonly Parameter down_proj;

    /// <summary>Creates uninitialised stacks for <paramref name="experts"/> experts of <paramref name="size"/> neurons.</summary>
    public StackedExperts(int experts, int size, int hidden, ScalarType dtype = ScalarType.Float32) : base(nameof(StackedExperts))
    {
        gate_proj = new Parameter(empty(experts, size, hidden, dtype: dtype), requires_grad: false);
        up_proj = new Parameter(empty(experts, size, hidden, dtype: dtype), requires_grad: false);
        down_proj = new Parameter(empty(experts, hidden, size, dtype: dtype), requires_grad: false);
        RegisterComponents();
    }

    /// <summary>W_gate of every expert [E, m, d].</summary>
    public Parameter Gate => gate_proj;
    /// <summary>W_up of every expert [E, m, d].</summary>
    public Parameter Up => up_proj;
    /// <summary>W_down of every expert [E, d, m].</summary>
    public Parameter Down => down_proj;

    /// <summary>Optional low-rank terms on every expert's matrices (LoRA while fine-tuning); not part of the state dict.</summary>
    internal IExpertAdapter? Adapter { get; set; }

    /// <summary>Expert j on its tokens: x [n, d] -> W_down_j (SiLU(W_gate_j x) * (W_up_j x)) [n, d].</summary>
    public Tensor Expert(long j, Tensor x)
    {
        using var scope = NewDisposeScope();
        if (Adapter is { } lora) return AdaptedExpert(lora, j, x).MoveToOuterDisposeScope();
        var h = F.silu(F.linear(x, gate_proj[j])) * F.linear(x, up_proj[j]);   // [n, m]
        return F.linear(h, down_proj[j]).MoveToOuterDisposeScope();            // [n, d]
    }

    /// <summary>Expert j with each matrix W replaced by W + (low-rank term): same shapes as <see cref="Expert"/>.</summary>
    private Tensor AdaptedExpert(IExpertAdapter lora, long j, Tensor x)
    {
        var g = F.linear(x, gate_proj[j]) + lora.Delta(ExpertMatrix.Gate, j, x, training);   // [n, m]
        var u = F.linear(x, up_proj[j]) + lora.Delta(ExpertMatrix.Up, j, x, training);       // [n, m]
        var h = F.silu(g) * u;                                                               // [n, m]
        return F.linear(h, down_proj[j]) + lora.Delta(ExpertMatrix.Down, j, h, training);    // [n, d]
    }
}
