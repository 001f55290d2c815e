using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Modeling;

/// <summary>
/// A linear map y = x W^T (+ b) whose weight starts uninitialised (it is always loaded from a
/// checkpoint), so building a large model costs no random initialisation. State-dict keys:
/// <c>weight</c> [out, in] and, when present, <c>bias</c> [out], as <c>torch.nn.Linear</c>.
/// </summary>
public sealed class Projection : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly Parameter? bias;

    /// <summary>Creates an uninitialised [outFeatures, inFeatures] projection.</summary>
    public Projection(long inFeatures, long outFeatures, bool hasBias = false, ScalarType dtype = ScalarType.Float32)
        : base(nameof(Projection))
    {
        weight = new Parameter(empty(outFeatures, inFeatures, dtype: dtype), requires_grad: false);
        if (hasBias) bias = new Parameter(zeros(outFeatures, dtype: dtype), requires_grad: false);
        RegisterComponents();
    }

    /// <summary>A projection whose weight is <paramref name="weightStorage"/> [out, in] (e.g. a view of a <see cref="FusedWeights"/> block).</summary>
    internal Projection(Tensor weightStorage) : base(nameof(Projection))
    {
        weight = new Parameter(weightStorage, requires_grad: false);
        RegisterComponents();
    }

    /// <summary>
    /// Whether inference fast paths may read <see cref="Weight"/> directly (e.g. fused with sibling
    /// projections) instead of calling <see cref="forward"/>: true when not in training mode. Anything
    /// that makes <see cref="forward"/> differ from x W^T (+ b), e.g. an unmerged adapter, must make this false.
    /// </summary>
    public bool RawWeightsUsable => !training && Adapter is null;

    /// <summary>The weight [out, in].</summary>
    public Parameter Weight => weight;

    /// <summary>The bias [out], or null.</summary>
    public Parameter? Bias => bias;

    /// <summary>An optional low-rank term added to the output (LoRA while fine-tuning); not part of the state dict.</summary>
    internal IProjectionAdapter? Adapter { get; set; }

    /// <summary>x [..., in] -> [..., out] (+ the adapter's low-rank term when one is attached).</summary>
    public override Tensor forward(Tensor x)
    {
        if (Adapter is null) return F.linear(x, weight, bias);
        using var scope = NewDisposeScope();
        return (F.linear(x, weight, bias) + Adapter.Delta(x, training)).MoveToOuterDisposeScope();
    }
}
