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
        using var scope = NewDisposeScope();
        if (ids.numel() > 0)
        {
            var range = stack([ids.min(), ids.max()]).data<long>();                    // one host sync, not two
            long low = range[0], high = range[1], vocab = weight.shape[0];
            if (low < 0 || high >= vocab)
                throw new ArgumentException($"Token id {(low < 0 ? low : high)} is outside the model's vocabulary of {vocab}: the tokenizer does not belong to this model. Use the model folder's own tokenizer files.");
        }
        var flat = weight.index_select(0, ids.flatten());                             // [b*t, d]
        return flat.view(ids.shape[0], ids.shape[1], -1).MoveToOuterDisposeScope();
    }
}
