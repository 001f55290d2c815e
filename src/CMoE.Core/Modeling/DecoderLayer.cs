using CMoE.Modeling.Weights;
using static TorchSharp.torch;

namespace CMoE.Modeling;

/// <summary>
/// One pre-norm decoder layer: h = x + Attn(RMSNorm(x)); y = h + FFN(RMSNorm(h)). The FFN is a
/// dense <see cref="SwiGluMlp"/> or, after carving, a Mixture-of-Experts block (any module). With sandwich norms
/// (<see cref="LlamaConfig.SandwichNorms"/>, Gemma-2): h = x + N_post_attn(Attn(N_in(x))); y = h + N_post_ffw(FFN(N_pre_ffw(h))),
/// the Hugging Face keys being <c>post_attention_layernorm</c> (after attention), <c>pre_feedforward_layernorm</c>,
/// <c>post_feedforward_layernorm</c>; without them <c>post_attention_layernorm</c> is the FFN's pre-norm (LLaMA's naming).
/// </summary>
public sealed class DecoderLayer : nn.Module
{
    // Field names are the Hugging Face keys (model.layers.{i}.input_layernorm.weight, ...).
    private readonly RmsNorm input_layernorm;
    private readonly LlamaAttention self_attn;
    private readonly RmsNorm post_attention_layernorm;
    private readonly RmsNorm? pre_feedforward_layernorm;    // sandwich norms only
    private readonly RmsNorm? post_feedforward_layernorm;
    private nn.Module<Tensor, Tensor> mlp;

    /// <summary>Creates a dense layer with uninitialised weights in <paramref name="precision"/> (fp32 when null).</summary>
    public DecoderLayer(LlamaConfig c, Precision? precision = null) : base(nameof(DecoderLayer))
    {
        var p = precision ?? Precision.Fp32;
        RmsNorm Norm() => new(c.HiddenSize, c.RmsNormEps, p.Compute, c.NormWeightOffset);
        input_layernorm = Norm();
        self_attn = new LlamaAttention(c, p);
        post_attention_layernorm = Norm();
        if (c.SandwichNorms)
        {
            pre_feedforward_layernorm = Norm();
            post_feedforward_layernorm = Norm();
        }
        mlp = new SwiGluMlp(c.HiddenSize, c.IntermediateSize, p, c.Activation);
        RegisterComponents();
    }

    /// <summary>The RMSNorm before attention.</summary>
    public RmsNorm InputNorm => input_layernorm;

    /// <summary>The RMSNorm before the FFN.</summary>
    public RmsNorm FfnNorm => pre_feedforward_layernorm ?? post_attention_layernorm;

    /// <summary>The RMSNorm of the attention output (sandwich norms), or null.</summary>
    public RmsNorm? PostAttentionNorm => pre_feedforward_layernorm is null ? null : post_attention_layernorm;

    /// <summary>The RMSNorm of the FFN output (sandwich norms), or null.</summary>
    public RmsNorm? PostFfnNorm => post_feedforward_layernorm;

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
        var a = self_attn.Forward(input_layernorm.forward(x), cos, sin, cache, layer);   // [b, t, d]
        if (PostAttentionNorm is { } post) a = post.forward(a);
        return x.add(a, Scalars.One).MoveToOuterDisposeScope();
    }

    /// <summary>The FFN residual: h + FFN output (normalised first with sandwich norms); [b, t, d].</summary>
    public Tensor AddFfnOutput(Tensor h, Tensor ffnOutput)
    {
        using var scope = NewDisposeScope();
        var f = post_feedforward_layernorm is { } post ? post.forward(ffnOutput) : ffnOutput;
        return h.add(f, Scalars.One).MoveToOuterDisposeScope();
    }

    /// <summary>The FFN input RMSNorm(h) [b, t, d] (what CMoE profiles).</summary>
    public Tensor FfnInput(Tensor h) => FfnNorm.forward(h);

    /// <summary>The whole layer: x [b, t, d] -> [b, t, d].</summary>
    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, KvCache? cache, int layer)
    {
        using var scope = NewDisposeScope();
        var h = AttentionResidual(x, cos, sin, cache, layer);                        // [b, t, d]
        return AddFfnOutput(h, mlp.forward(FfnInput(h))).MoveToOuterDisposeScope();
    }
}
