using CMoE.Modeling.Kernels;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CMoE.Modeling.Weights;

/// <summary>
/// A weight tensor [..., rows, cols] in its storage format: <see cref="Values"/> (a <see cref="Parameter"/> for fp32 and bf16,
/// so fine-tuning can train it; an int8 buffer for int8) and, for int8, <see cref="Scales"/> [..., rows, cols / G] fp32.
/// State-dict keys: the owner's key for the values (e.g. <c>q_proj.weight</c>, <c>experts.down_proj</c>) and that key +
/// <c>_scale</c> for the scales (int8 only), so fp32 and bf16 keys stay Hugging Face's.
/// </summary>
internal sealed record StoredWeight(Tensor Values, Tensor? Scales, WeightFormat Format)
{
    /// <summary>An uninitialised weight of <paramref name="shape"/> stored as <paramref name="format"/> (already resolved per matrix with <see cref="WeightFormat.For"/>).</summary>
    public static StoredWeight Allocate(long[] shape, WeightFormat format)
    {
        var values = empty(shape, dtype: format.ValueType).DetachFromDisposeScope();
        Tensor? scales = null;
        if (format.Kind == WeightKind.Int8)
            scales = empty([.. shape[..^1], shape[^1] / format.GroupSize], dtype: ScalarType.Float32).DetachFromDisposeScope();
        return new StoredWeight(values, scales, format);
    }

    /// <summary>The values as a module field: a frozen <see cref="Parameter"/> for float formats, the int8 tensor itself otherwise.</summary>
    public static Tensor Field(Tensor values) =>
        values.is_floating_point() ? new Parameter(values, requires_grad: false) : values;

    /// <summary>Rows [start, start + length) along <paramref name="dim"/> (not the last dimension): views of the values and scales.</summary>
    public StoredWeight Narrow(int dim, long start, long length) =>
        new(Values.narrow(dim, start, length), Scales?.narrow(dim, start, length), Format);

    /// <summary>Element <paramref name="index"/> of the first dimension (e.g. one expert of a stack): views.</summary>
    public StoredWeight Select(long index) => new(Values[index], Scales?[index], Format);

    /// <summary>The number of bytes the values and scales occupy.</summary>
    public long Bytes => Values.numel() * Values.element_size() + (Scales is null ? 0 : Scales.numel() * 4);

    /// <summary>The weight as a <paramref name="dtype"/> tensor: the values themselves when they already are, else a converted or dequantized copy.</summary>
    public Tensor Dense(ScalarType dtype)
    {
        if (Scales is not null) return Int8Quantizer.Dequantize(Values, Scales, dtype);
        return Values.dtype == dtype ? Values.alias() : Values.to(dtype);
    }

    /// <summary>x W^T (+ b) for x [..., cols] in the compute dtype (see <see cref="WeightKernels.Linear"/>).</summary>
    public Tensor Linear(Tensor x, Tensor? bias = null) => WeightKernels.Linear(x, this, bias);

    /// <summary>Fills the weight from <paramref name="source"/> (same shape, any float dtype): copied, converted or quantized.</summary>
    public void Assign(Tensor source)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        if (!source.shape.SequenceEqual(Values.shape))
            throw new ArgumentException($"A [{string.Join(", ", source.shape)}] tensor cannot fill a [{string.Join(", ", Values.shape)}] weight.");
        if (Scales is null)
        {
            Values.copy_(source);                                                    // converts float types
            return;
        }
        var (q, s) = Int8Quantizer.Quantize(source, Format.GroupSize);
        Values.copy_(q);
        Scales.copy_(s);
    }

    /// <summary>Fills an int8 weight from stored int8 values and scales (a low-bit folder), checking their shapes.</summary>
    public void AssignQuantized(Tensor values, Tensor scales)
    {
        using var noGrad = no_grad();
        if (Scales is null || !values.shape.SequenceEqual(Values.shape) || !scales.shape.SequenceEqual(Scales.shape) || values.dtype != ScalarType.Int8)
            throw new ArgumentException($"Stored int8 values [{string.Join(", ", values.shape)}] and scales [{string.Join(", ", scales.shape)}] do not fit this {Format} weight [{string.Join(", ", Values.shape)}].");
        Values.copy_(values);
        Scales.copy_(scales);
    }
}
