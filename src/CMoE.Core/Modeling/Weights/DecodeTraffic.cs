using CMoE.Modeling.MoE;

namespace CMoE.Modeling.Weights;

/// <summary>
/// Bytes of weights one decoded token reads in a model: every weight matrix once, except that only one row of the embedding
/// table is read (the whole table when it is also the tied lm_head), and a carved FFN reads its router, its shared expert and
/// only the selected experts. What a decode step streams from memory besides the KV cache; with the step's time it gives the
/// achieved bandwidth.
/// </summary>
public static class DecodeTraffic
{
    /// <summary>Weight bytes read per decoded token (one sequence).</summary>
    public static long WeightBytesPerToken(LlamaForCausalLM model)
    {
        long bytes = 0;
        var embedding = model.Model.Embeddings.Stored;
        bytes += model.LmHead is null ? embedding.Bytes : embedding.Bytes / model.Config.VocabSize;   // tied: the table is the lm_head
        if (model.LmHead is { } head) bytes += head.Stored.Bytes;
        foreach (var layer in model.Model.Layers)
        {
            bytes += layer.Attention.Projections.Sum(p => p.Stored.Bytes);
            bytes += 4L * 2 * model.Config.HiddenSize;                                                      // the two RMSNorm weights
            bytes += layer.Mlp switch
            {
                SwiGluMlp dense => Ffn(dense),
                MoeBlock moe => Carved(moe),
                _ => 0,
            };
        }
        return bytes;
    }

    private static long Ffn(SwiGluMlp mlp) => mlp.Gate.Stored.Bytes + mlp.Up.Stored.Bytes + mlp.Down.Stored.Bytes;

    private static long Carved(MoeBlock moe)
    {
        var x = moe.Experts;
        long perExpert = (x.StoredGate.Bytes + x.StoredUp.Bytes + x.StoredDown.Bytes) / moe.Shape.RoutedExperts;
        long router = (moe.Router.Gate.numel() + moe.Router.Up.numel()) * moe.Router.Gate.element_size() + 8L * moe.Shape.RoutedExperts;
        return router + (moe.SharedExpert is { } s ? Ffn(s) : 0) + Math.Min(moe.ActiveExperts, moe.Shape.RoutedExperts) * perExpert;
    }
}
