using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Modeling;

/// <summary>
/// Multi-head causal self-attention with rotary positions and grouped-query attention (GQA):
/// each group of num_heads / num_kv_heads query heads shares one key/value head.
/// </summary>
public sealed class LlamaAttention : nn.Module
{
    // Field names are the Hugging Face keys (self_attn.q_proj.weight, ...).
    private readonly Projection q_proj;
    private readonly Projection k_proj;
    private readonly Projection v_proj;
    private readonly Projection o_proj;
    private readonly int _heads, _kvHeads, _headDim;

    /// <summary>Creates the attention block with uninitialised weights.</summary>
    public LlamaAttention(LlamaConfig c, ScalarType dtype = ScalarType.Float32) : base(nameof(LlamaAttention))
    {
        (_heads, _kvHeads, _headDim) = (c.NumHeads, c.NumKeyValueHeads, c.HeadDim);
        q_proj = new Projection(c.HiddenSize, _heads * _headDim, c.QkvBias, dtype);
        k_proj = new Projection(c.HiddenSize, _kvHeads * _headDim, c.QkvBias, dtype);
        v_proj = new Projection(c.HiddenSize, _kvHeads * _headDim, c.QkvBias, dtype);
        o_proj = new Projection(_heads * _headDim, c.HiddenSize, c.OutputBias, dtype);
        RegisterComponents();
    }

    /// <summary>The q, k, v, o projections (for LoRA and tests).</summary>
    public IReadOnlyList<Projection> Projections => [q_proj, k_proj, v_proj, o_proj];

    /// <summary>
    /// x [batch, seq, d] at positions [start, start + seq) -> [batch, seq, d]. With a cache, keys and
    /// values of earlier positions come from it and this step's are appended.
    /// </summary>
    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, KvCache? cache, int layer)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        var q = q_proj.forward(x).view(b, t, _heads, _headDim).transpose(1, 2);     // [b, H, t, hd]
        var k = k_proj.forward(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);   // [b, KV, t, hd]
        var v = v_proj.forward(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);   // [b, KV, t, hd]
        q = RotaryEmbedding.Apply(q, cos, sin);
        k = RotaryEmbedding.Apply(k, cos, sin);
        long past = cache?.Length ?? 0;
        if (cache is not null) (k, v) = cache.Append(layer, k, v);                  // [b, KV, past + t, hd]
        if (t == 1 && past > 0 && _kvHeads != _heads)
        {
            // Decode step: the H/KV query heads of a group become G "positions" of one query against the
            // group's shared key/value head (no mask: one new token sees every cached position). Same
            // result as repeating k and v per query head, without copying the whole cache each step.
            var grouped = F.scaled_dot_product_attention(q.reshape(b, _kvHeads, _heads / _kvHeads, _headDim), k, v); // [b, KV, G, hd]
            return o_proj.forward(grouped.reshape(b, 1, _heads * _headDim)).MoveToOuterDisposeScope();            // [b, 1, d]
        }
        if (_kvHeads != _heads)
        {
            k = k.repeat_interleave(_heads / _kvHeads, dim: 1);                      // [b, H, s, hd]
            v = v.repeat_interleave(_heads / _kvHeads, dim: 1);
        }
        Tensor attn = past == 0
            ? F.scaled_dot_product_attention(q, k, v, is_casual: t > 1)
            : F.scaled_dot_product_attention(q, k, v, attn_mask: t > 1 ? OffsetCausalMask(t, past, x.device) : null);
        var merged = attn.transpose(1, 2).reshape(b, t, _heads * _headDim);          // [b, t, H*hd]
        return o_proj.forward(merged).MoveToOuterDisposeScope();
    }

    /// <summary>Boolean mask [t, past + t]: query i sees keys 0..past + i.</summary>
    private static Tensor OffsetCausalMask(long t, long past, Device device) =>
        ones([t, past + t], dtype: ScalarType.Bool, device: device).tril(past);
}
