using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CMoE.Modeling;

/// <summary>Token embedding table (key <c>weight</c> [vocab, d]), uninitialised until loaded.</summary>
public sealed class TokenEmbedding : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;

    /// <summary>Creates a [vocab, hidden] table.</summary>
    public TokenEmbedding(long vocab, long hidden, ScalarType dtype = ScalarType.Float32) : base(nameof(TokenEmbedding))
    {
        weight = new Parameter(empty(vocab, hidden, dtype: dtype), requires_grad: false);
        RegisterComponents();
    }

    /// <summary>The table [vocab, d].</summary>
    public Parameter Weight => weight;

    /// <summary>ids [b, t] (int64) -> [b, t, d].</summary>
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
        var flat = weight.index_select(0, ids.flatten());                             // [b*t, d]
        return flat.view(ids.shape[0], ids.shape[1], -1).MoveToOuterDisposeScope();
    }

    private void CheckRange(long low, long high)
    {
        long vocab = weight.shape[0];
        if (low < 0 || high >= vocab)
            throw new ArgumentException($"Token id {(low < 0 ? low : high)} is outside the model's vocabulary of {vocab}: the tokenizer does not belong to this model. Use the model folder's own tokenizer files.");
    }

    /// <summary>
    /// Decode path (CPU, fp32 table, int64 ids, at most <see cref="DecodeKernels.MaxTokens"/> of them, no gradient): the
    /// range check and the row copies in managed code, one allocation instead of five tensor operations; else null.
    /// </summary>
    private unsafe Tensor? TryManagedLookup(Tensor ids)
    {
        if (ids.dim() != 2 || ids.dtype != ScalarType.Int64 || ids.device_type != TorchSharp.DeviceType.CPU || !ids.is_contiguous()) return null;
        long n = ids.numel();
        if (n == 0 || n > DecodeKernels.MaxTokens || (weight.requires_grad && is_grad_enabled()) || !DecodeKernels.Readable(weight)) return null;
        ReadOnlySpan<long> tokens = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, long>(ids.bytes);
        long low = long.MaxValue, high = long.MinValue;
        foreach (long id in tokens) (low, high) = (Math.Min(low, id), Math.Max(high, id));
        CheckRange(low, high);
        int d = (int)weight.shape[1];
        var table = DecodeKernels.Pointer(weight);
        var y = empty([ids.shape[0], ids.shape[1], d], dtype: ScalarType.Float32);
        var ys = DecodeKernels.Floats(y);
        for (int t = 0; t < tokens.Length; t++) new ReadOnlySpan<float>(table + tokens[t] * d, d).CopyTo(ys.Slice(t * d, d));
        return y;
    }
}
