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
        if (TryManagedForward(x) is { } decoded) return decoded;
        if (Adapter is null) return F.linear(x, weight, bias);
        using var scope = NewDisposeScope();
        return F.linear(x, weight, bias).add(Adapter.Delta(x, training), Scalars.One).MoveToOuterDisposeScope();
    }

    private readonly PerWeights<WeightPointers> _decoder = new();

    private sealed record WeightPointers(nint Weight, nint Bias);

    /// <summary>
    /// Decode path (eval mode, CPU fp32, at most <see cref="DecodeKernels.MaxTokens"/> rows, no gradient): x W^T (+ b) as a
    /// managed matrix-vector product into a fresh tensor (e.g. the lm_head of a decode step); null where it does not apply.
    /// </summary>
    private unsafe Tensor? TryManagedForward(Tensor x)
    {
        if (!RawWeightsUsable || (weight.requires_grad && is_grad_enabled())) return null;
        long inF = weight.shape[1], outF = weight.shape[0];
        if (!DecodeKernels.Qualifies(x, inF, DecodeKernels.MaxTokens)) return null;
        var pointers = _decoder.Get(bias is null ? [weight] : [weight, bias], () =>
            DecodeKernels.Readable(bias is null ? [weight] : [weight, bias])
                ? new((nint)DecodeKernels.Pointer(weight), bias is null ? 0 : (nint)DecodeKernels.Pointer(bias))
                : null);
        if (pointers is null) return null;
        long[] shape = x.shape;
        shape[^1] = outF;
        var y = empty(shape, dtype: ScalarType.Float32);
        ReadOnlySpan<float> xs = DecodeKernels.Floats(x);
        var ys = DecodeKernels.Floats(y);
        for (int t = 0; t < xs.Length / inF; t++)
        {
            var row = ys.Slice(t * (int)outF, (int)outF);
            DecodeKernels.MatVec((float*)pointers.Weight, (int)outF, (int)inF, xs.Slice(t * (int)inF, (int)inF), row, null);
            if (pointers.Bias != 0) System.Numerics.Tensors.TensorPrimitives.Add(row, new ReadOnlySpan<float>((float*)pointers.Bias, (int)outF), row);
        }
        return y;
    }
}
