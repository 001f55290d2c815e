using CMoE.Carving;
using CMoE.Modeling;

namespace CMoE.Sweeps;

/// <summary>Parameter counts per token of dense and carved models (the cost axis besides the FFN fraction).</summary>
public static class ActiveParameters
{
    /// <summary>Parameters of one dense SwiGLU FFN: 3 * d * d_h (gate, up, down).</summary>
    public static long DenseFfn(LlamaConfig config) => 3L * config.HiddenSize * config.IntermediateSize;

    /// <summary>Every parameter outside the FFNs (embeddings, attention, norms, lm_head), from the config.</summary>
    public static long NonFfn(LlamaConfig config)
    {
        long d = config.HiddenSize, q = (long)config.NumHeads * config.HeadDim, kv = (long)config.NumKeyValueHeads * config.HeadDim;
        long attention = d * q + 2 * d * kv + q * d + (config.QkvBias ? q + 2 * kv : 0) + (config.OutputBias ? d : 0);
        long perLayer = attention + 2 * d;                                          // + two RMSNorm weights
        long embeddings = (long)config.VocabSize * d * (config.TieWordEmbeddings ? 1 : 2);
        return embeddings + config.NumLayers * perLayer + d;                       // + final norm
    }

    /// <summary>All parameters of the dense model.</summary>
    public static long Dense(LlamaConfig config) => NonFfn(config) + config.NumLayers * DenseFfn(config);

    /// <summary>
    /// Parameters used per token by a carved model: non-FFN parameters + per layer the shared expert
    /// (<c>3 d (s m + r)</c>), the <c>a</c> active routed experts (<c>a m 3 d</c>) and the router
    /// (G and U, <c>2 (e - s) d</c>, plus the scales u, <c>e - s</c>).
    /// </summary>
    public static long Carved(LlamaConfig config, MoeLayout layout)
    {
        long d = config.HiddenSize;
        int dh = config.IntermediateSize;
        long m = layout.ExpertSize(dh);
        long shared = 3 * d * layout.SharedSize(dh);
        long routed = layout.Active * m * 3 * d;
        long router = 2L * layout.Routed * d + layout.Routed;
        return NonFfn(config) + config.NumLayers * (shared + routed + router);
    }
}
