using CMoE.Modeling.Kernels;
using CMoE.Modeling.Weights;
using static TorchSharp.torch;

namespace CMoE.Modeling;

/// <summary>
/// Token embedding table (key <c>weight</c> [vocab, d], plus <c>weight_scale</c> [vocab, d / G] for int8), uninitialised until
/// loaded, stored in the model's weight format; looked-up rows come out in the compute dtype.
/// </summary>
public sealed class TokenEmbedding : nn.Module<Tensor, Tensor>
{
    private readonly Tensor weight;            // [vocab, d]: a Parameter (fp32, bf16) or int8 values
    private readonly Tensor? weight_scale;     // [vocab, d / G], int8 only
    private readonly WeightFormat _format;
    private readonly ScalarType _compute;
    private readonly double? _scale;           // Gemma: rows times sqrt(d), the factor rounded to the compute dtype

    /// <summary>
    /// Creates a [vocab, hidden] table in <paramref name="precision"/> (fp32 when null); with <paramref name="scaleBySqrtHidden"/>
    /// looked-up rows are multiplied by sqrt(hidden) in the compute dtype (Gemma's normalizer).
    /// </summary>
    public TokenEmbedding(long vocab, long hidden, Precision? precision = null, bool scaleBySqrtHidden = false) : base(nameof(TokenEmbedding))
    {
        var p = precision ?? Precision.Fp32;
        var stored = StoredWeight.Allocate([vocab, hidden], p.Weights.For(hidden, "the embedding table"));
        weight = StoredWeight.Field(stored.Values);
        weight_scale = stored.Scales;
        (_format, _compute) = (stored.Format, p.Compute);
        if (scaleBySqrtHidden)
        {
            using var normalizer = tensor(Math.Sqrt(hidden), dtype: p.Compute);             // torch.tensor(hidden**0.5, dtype) as HF
            _scale = normalizer.to(ScalarType.Float64).item<double>();
        }
        RegisterComponents();
    }

    /// <summary>The table's values [vocab, d] (int8 values for int8 weights).</summary>
    public Tensor Weight => weight;

    /// <summary>The table in its storage format.</summary>
    internal StoredWeight Stored => new(weight, weight_scale, _format);

    /// <summary>ids [b, t] (int64) -> [b, t, d] in the compute dtype.</summary>
    /// <exception cref="ArgumentException">An id is outside the vocabulary (a tokenizer that does not belong to the model).</exception>
    public override Tensor forward(Tensor ids)
    {
        if (TryManagedLookup(ids) is { } rows) return rows;
        using var scope = NewDisposeScope();
        if (ids.numel() > 0)
        {
            var range = stack([ids.min(), ids.max()]).data<long>();                    // one host sync, not two
            CheckRange(range[0], range[1]);
        }
        var flat = ids.flatten();
        var picked = new StoredWeight(weight.index_select(0, flat), weight_scale?.index_select(0, flat), _format);   // [b*t, d]
        var looked = picked.Dense(_compute).view(ids.shape[0], ids.shape[1], -1);                               // [b, t, d]
        return (_scale is double s ? looked.mul(Scalars.Of(s)) : looked).MoveToOuterDisposeScope();
    }

    private void CheckRange(long low, long high)
    {
        long vocab = weight.shape[0];
        if (low < 0 || high >= vocab)
            throw new ArgumentException($"Token id {(low < 0 ? low : high)} is outside the model's vocabulary of {vocab}: the tokenizer does not belong to this model. Use the model folder's own tokenizer files.");
    }

    private readonly PerWeights<TableView> _view = new();

    private sealed record TableView(MatrixView Table);

    /// <summary>The managed lookup's view of the table, or null when it cannot read it.</summary>
    private MatrixView? Decodable()
    {
        if ((weight.requires_grad && is_grad_enabled()) || _compute != ScalarType.Float32) return null;
        Tensor[] sources = weight_scale is null ? [weight] : [weight, weight_scale];
        return _view.Get(sources, () => MatrixView.Of(Stored) is { } v ? new TableView(v) : null)?.Table;
    }

    /// <summary>
    /// Decode path (CPU, fp32 activations, int64 ids, at most <see cref="DecodeKernels.MaxTokens"/> of them, no gradient): the
    /// range check and the row copies (converted to fp32) in managed code, one allocation instead of five tensor operations; else null.
    /// </summary>
    private Tensor? TryManagedLookup(Tensor ids)
    {
        if (ids.dim() != 2 || ids.dtype != ScalarType.Int64 || ids.device_type != TorchSharp.DeviceType.CPU || !ids.is_contiguous()) return null;
        long n = ids.numel();
        if (n == 0 || n > DecodeKernels.MaxTokens || Decodable() is not { } table) return null;
        ReadOnlySpan<long> tokens = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, long>(ids.bytes);
        var y = empty([ids.shape[0], ids.shape[1], table.Cols], dtype: ScalarType.Float32);
        Lookup(table, tokens, DecodeKernels.Floats(y));
        return y;
    }

    /// <summary>The fp32 rows of <paramref name="tokens"/> into <paramref name="y"/> [n * d], after the range check.</summary>
    internal void Lookup(MatrixView table, ReadOnlySpan<long> tokens, Span<float> y)
    {
        long low = long.MaxValue, high = long.MinValue;
        foreach (long id in tokens) (low, high) = (Math.Min(low, id), Math.Max(high, id));
        CheckRange(low, high);
        for (int t = 0; t < tokens.Length; t++) Row(table, tokens[t], y.Slice(t * table.Cols, table.Cols));
        if (_scale is double s) System.Numerics.Tensors.TensorPrimitives.Multiply(y[..(tokens.Length * table.Cols)], (float)s, y);
    }

    /// <summary>Row <paramref name="id"/> of a table in any format, as fp32.</summary>
    private static unsafe void Row(in MatrixView table, long id, Span<float> y)
    {
        int d = table.Cols;
        switch (table.Kind)
        {
            case WeightKind.Fp32:
                new ReadOnlySpan<float>((float*)table.Values + id * d, d).CopyTo(y);
                break;
            case WeightKind.Bf16:
                ushort* b = (ushort*)table.Values + id * d;
                for (int i = 0; i < d; i++) y[i] = Bf16Rows.ToSingle(b[i]);
                break;
            default:
                sbyte* q = (sbyte*)table.Values + id * d;
                int groups = d / table.Group;
                float* s = table.Scales + id * groups;
                for (int i = 0; i < d; i++) y[i] = q[i] * s[i / table.Group];
                break;
        }
    }

    /// <summary>The managed view of the table for the model-level decode step (null when it cannot be read).</summary>
    internal MatrixView? DecodeView() => Decodable();
}
