using CMoE.Modeling.Weights;
using static TorchSharp.torch;

namespace CMoE.Modeling;

/// <summary>
/// One pre-norm decoder layer: h = x + Attn(RMSNorm(x)); y = h + FFN(RMSNorm(h)). The FFN is a
/// dense <see cref="SwiGluMlp"/> or, after carving, a Mixture-of-Experts block (any module).
/// </summary>
public sealed class DecoderLayer : nn.Module
{
    // Field names are the Hugging Face keys (model.layers.{i}.input_layernorm.weight, ...).
    private readonly RmsNorm input_layernorm;
    private readonly LlamaAttention self_attn;
    private readonly RmsNorm post_attention_layernorm;
    private nn.Module<Tensor, Tensor> mlp;

    /// <summary>Creates a dense layer with uninitialised weights in <paramref name="precision"/> (fp32 when null).</summary>
    public DecoderLayer(LlamaConfig c, Precision? precision = null) : base(nameof(DecoderLayer))
    {
        var p = precision ?? Precision.Fp32;
        input_layernorm = new RmsNorm(c.HiddenSize, c.RmsNormEps, p.Compute);
        self_attn = new LlamaAttention(c, p);
        post_attention_layernorm = new RmsNorm(c.HiddenSize, c.RmsNormEps, p.Compute);
        mlp = new SwiGluMlp(c.HiddenSize, c.IntermediateSize, p);
        RegisterComponents();
    }

    /// <summary>The RMSNorm before attention.</summary>
    public RmsNorm InputNorm => input_layernorm;

    /// <summary>The RMSNorm before the FFN.</summary>
    public RmsNorm FfnNorm => post_attention_layernorm;

    /// <summary>The attention block.</summary>
    public LlamaAttention Attention => self_attn;

    /// <summary>The feed-forward block (dense or carved).</summary>
    public nn.Module<Tensor, Tensor> Mlp => mlp;

    /// <summary>Replaces the feed-forward block (carving); the old one is disposed.</summary>
    public void ReplaceMlp(nn.Module<Tensor, Tensor> replacement)
    {
        var old = mlp;
        if (training) replacement.train(); else replacement.eval();   // the new block follows the layer's mode
        mlp = replacement;
        _internal_submodules["mlp"] = replacement;   // replace in place, keeping the key order
        if (!ReferenceEquals(old, replacement)) old.Dispose();
    }

    /// <summary>Attention half: x [b, t, d] -> h = x + Attn(RMSNorm(x)).</summary>
    public Tensor AttentionResidual(Tensor x, Tensor cos, Tensor sin, KvCache? cache, int layer)
    {
        using var scope = NewDisposeScope();
        var h = x.add(self_attn.Forward(input_layernorm.forward(x), cos, sin, cache, layer), Scalars.One);
        return h.MoveToOuterDisposeScope();
    }

    /// <summary>The FFN input RMSNorm(h) [b, t, d] (what CMoE profiles).</summary>
    public Tensor FfnInput(Tensor h) => post_attention_layernorm.forward(h);

    /// <summary>The whole layer: x [b, t, d] -> [b, t, d].</summary>
    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, KvCache? cache, int layer)
    {
        using var scope = NewDisposeScope();
        var h = AttentionResidual(x, cos, sin, cache, layer);                        // [b, t, d]
        return h.add(mlp.forward(FfnInput(h)), Scalars.One).MoveToOuterDisposeScope();
    }
}
