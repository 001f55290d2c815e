using CMoE.Modeling.Kernels;
using CMoE.Modeling.Weights;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CMoE.Modeling;

/// <summary>
/// A linear map y = x W^T (+ b) whose weight starts uninitialised (it is always loaded from a checkpoint), so building a
/// large model costs no random initialisation. The weight is stored in the model's <see cref="WeightFormat"/> (see
/// <see cref="StoredWeight"/>). State-dict keys: <c>weight</c> [out, in], <c>weight_scale</c> [out, in / G] for int8 weights,
/// and, when present, <c>bias</c> [out] (in the compute dtype), as <c>torch.nn.Linear</c> plus the scales.
/// </summary>
public sealed class Projection : nn.Module<Tensor, Tensor>
{
    private readonly Tensor weight;            // [out, in]: a Parameter (fp32, bf16) or int8 values
    private readonly Tensor? weight_scale;     // [out, in / G] fp32, int8 only
    private readonly Parameter? bias;
    private readonly WeightFormat _format;

    /// <summary>Creates an uninitialised [outFeatures, inFeatures] projection in <paramref name="precision"/> (fp32 when null).</summary>
    public Projection(long inFeatures, long outFeatures, bool hasBias = false, Precision? precision = null)
        : this(StoredWeight.Allocate([outFeatures, inFeatures], (precision ?? Precision.Fp32).Weights.For(inFeatures)),
            hasBias ? zeros(outFeatures, dtype: (precision ?? Precision.Fp32).Compute) : null)
    {
    }

    /// <summary>A projection whose weight is <paramref name="storage"/> [out, in] (e.g. a view of a <see cref="FusedWeights"/> block).</summary>
    internal Projection(StoredWeight storage, Tensor? biasValues = null) : base(nameof(Projection))
    {
        weight = StoredWeight.Field(storage.Values);
        weight_scale = storage.Scales;
        _format = storage.Format;
        if (biasValues is not null) bias = new Parameter(biasValues, requires_grad: false);
        RegisterComponents();
    }

    /// <summary>
    /// Whether inference fast paths may read <see cref="Weight"/> directly (e.g. fused with sibling
    /// projections) instead of calling <see cref="forward"/>: true when not in training mode. Anything
    /// that makes <see cref="forward"/> differ from x W^T (+ b), e.g. an unmerged adapter, must make this false.
    /// </summary>
    public bool RawWeightsUsable => !training && Adapter is null;

    /// <summary>The weight values [out, in]: a <see cref="Parameter"/> for fp32 and bf16 weights, int8 values for int8 ones.</summary>
    public Tensor Weight => weight;

    /// <summary>The weight in its storage format (values and, for int8, scales).</summary>
    internal StoredWeight Stored => new(weight, weight_scale, _format);

    /// <summary>The weight's storage format.</summary>
    public WeightFormat Format => _format;

    /// <summary>The bias [out], or null.</summary>
    public Parameter? Bias => bias;

    /// <summary>An optional low-rank term added to the output (LoRA while fine-tuning); not part of the state dict.</summary>
    internal IProjectionAdapter? Adapter { get; set; }

    /// <summary>x [..., in] -> [..., out] (+ the adapter's low-rank term when one is attached).</summary>
    public override Tensor forward(Tensor x)
    {
        if (TryManagedForward(x) is { } decoded) return decoded;
        if (Adapter is null) return Stored.Linear(x, bias);
        using var scope = NewDisposeScope();
        return Stored.Linear(x, bias).add(Adapter.Delta(x, training), Scalars.One).MoveToOuterDisposeScope();
    }

    private readonly PerWeights<DecodeView> _decoder = new();

    private sealed record DecodeView(MatrixView Weight, nint Bias);

    /// <summary>The managed kernels' view of the weight (and bias), or null when they cannot read it (another device, a non-contiguous view).</summary>
    internal unsafe (MatrixView Weight, nint Bias)? Decodable()
    {
        if (!RawWeightsUsable || (weight.requires_grad && is_grad_enabled())) return null;
        Tensor[] sources = (weight_scale, bias) switch
        {
            (null, null) => [weight],
            (null, { } b) => [weight, b],
            ({ } s, null) => [weight, s],
            ({ } s, { } b) => [weight, s, b],
        };
        var view = _decoder.Get(sources, () =>
            MatrixView.Of(Stored) is { } w && (bias is null || DecodeKernels.Readable(bias))
                ? new DecodeView(w, bias is null ? 0 : (nint)DecodeKernels.Pointer(bias))
                : null);
        return view is null ? null : (view.Weight, view.Bias);
    }

    /// <summary>
    /// Decode path (eval mode, CPU, fp32 activations, at most <see cref="DecodeKernels.MaxTokens"/> rows, no gradient): x W^T (+ b)
    /// as managed matrix-vector products into a fresh tensor (e.g. the lm_head of a decode step); null where it does not apply.
    /// </summary>
    private unsafe Tensor? TryManagedForward(Tensor x)
    {
        long inF = weight.shape[1], outF = weight.shape[0];
        if (!DecodeKernels.Qualifies(x, inF, DecodeKernels.MaxTokens) || Decodable() is not { } view) return null;
        long[] shape = x.shape;
        shape[^1] = outF;
        var y = empty(shape, dtype: ScalarType.Float32);
        Decode(view, DecodeKernels.Floats(x), DecodeKernels.Floats(y));
        return y;
    }

    /// <summary>y = x W^T (+ b) for each of the rows of <paramref name="x"/> [n * in] into <paramref name="y"/> [n * out].</summary>
    internal static unsafe void Decode((MatrixView Weight, nint Bias) view, ReadOnlySpan<float> x, Span<float> y)
    {
        int inF = view.Weight.Cols, outF = view.Weight.Rows;
        for (int t = 0; t < x.Length / inF; t++)
        {
            var row = y.Slice(t * outF, outF);
            MatVec.Run(view.Weight, x.Slice(t * inF, inF), row);
            if (view.Bias != 0) System.Numerics.Tensors.TensorPrimitives.Add(row, new ReadOnlySpan<float>((float*)view.Bias, outF), row);
        }
    }
}
