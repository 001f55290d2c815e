using TorchSharp.Modules;
using CMoE.Modeling.Weights;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Modeling;

/// <summary>The decoder stack ("model." keys): embeddings, layers, final norm.</summary>
public sealed class LlamaModel : nn.Module
{
    private readonly TokenEmbedding embed_tokens;
    private readonly ModuleList<DecoderLayer> layers;
    private readonly RmsNorm norm;
    private readonly List<DecoderLayer> _layerList = [];

    /// <summary>Creates the stack with uninitialised weights.</summary>
    public LlamaModel(LlamaConfig c, Precision precision) : base(nameof(LlamaModel))
    {
        embed_tokens = new TokenEmbedding(c.VocabSize, c.HiddenSize, precision, c.ScaleEmbeddings);
        layers = new ModuleList<DecoderLayer>();
        for (int i = 0; i < c.NumLayers; i++) layers.Add(new DecoderLayer(c, precision));
        _layerList.AddRange(layers);
        norm = new RmsNorm(c.HiddenSize, c.RmsNormEps, precision.Compute, c.NormWeightOffset);
        RegisterComponents();
    }

    /// <summary>The embedding table.</summary>
    public TokenEmbedding Embeddings => embed_tokens;
    /// <summary>The decoder layers.</summary>
    public IReadOnlyList<DecoderLayer> Layers => _layerList;
    /// <summary>The final RMSNorm.</summary>
    public RmsNorm Norm => norm;
}

/// <summary>
/// A LLaMA-family causal language model with Hugging Face state-dict keys
/// (<c>model.embed_tokens.weight</c>, <c>model.layers.{i}.self_attn.q_proj.weight</c>, ...,
/// <c>lm_head.weight</c>). Build it with <see cref="IO.CheckpointLoader"/>.
/// </summary>
public sealed class LlamaForCausalLM : nn.Module
{
    private readonly LlamaModel model;
    private readonly Projection? lm_head;
    private readonly RotaryEmbedding _rope;

    /// <summary>Creates the model with uninitialised weights in <paramref name="dtype"/> (activations and weights) on the CPU.</summary>
    public LlamaForCausalLM(LlamaConfig config, ScalarType dtype = ScalarType.Float32) : this(config, Precision.Of(dtype))
    {
    }

    /// <summary>Creates the model with uninitialised weights in <paramref name="precision"/> on the CPU.</summary>
    public LlamaForCausalLM(LlamaConfig config, Precision precision) : base(nameof(LlamaForCausalLM))
    {
        precision.Validate();
        Config = config;
        Precision = precision;
        model = new LlamaModel(config, precision);
        if (!config.TieWordEmbeddings) lm_head = new Projection(config.HiddenSize, config.VocabSize, precision: precision);
        _rope = new RotaryEmbedding(config);
        RegisterComponents();
        eval();   // inference by default (fast fused paths); the fine-tuner switches to train() while it trains
    }

    /// <summary>The architecture.</summary>
    public LlamaConfig Config { get; }

    /// <summary>The decoder stack.</summary>
    public LlamaModel Model => model;

    /// <summary>The device the weights are on.</summary>
    public Device Device => model.Embeddings.Weight.device;

    /// <summary>The activations' dtype (what the KV cache and new blocks use).</summary>
    public ScalarType DType => Precision.Compute;

    /// <summary>The compute dtype and the weight storage format the model was built with.</summary>
    public Precision Precision { get; }

    /// <summary>The lm_head projection, or null when it is tied to the embedding table.</summary>
    public Projection? LmHead => lm_head;

    /// <summary>Rotary tables for positions [start, start + length), in the model's device and dtype.</summary>
    public (Tensor Cos, Tensor Sin) Rotary(long start, long length) => _rope.Get(start, length, Device, DType);

    /// <summary>The fp32 rotary cos and sin of one position, [head_dim] each (the managed decode step).</summary>
    internal void RotaryRow(long position, Span<float> cos, Span<float> sin) => _rope.CopyRow(position, cos, sin);

    /// <summary>Final hidden states (after the last RMSNorm): ids [b, t] -> [b, t, d].</summary>
    public Tensor Hidden(Tensor ids, KvCache? cache = null)
    {
        if (cache is not null && DecodeStep.TryHidden(this, ids, cache) is { } stepped) return stepped;   // one token per sequence, managed
        using var scope = NewDisposeScope();
        long start = cache?.Length ?? 0;
        var (cos, sin) = Rotary(start, ids.shape[1]);
        var x = model.Embeddings.forward(ids.to(Device));                              // [b, t, d]
        for (int i = 0; i < model.Layers.Count; i++)
            x = model.Layers[i].Forward(x, cos, sin, cache, i);
        if (cache is not null) cache.Length += ids.shape[1];
        return model.Norm.forward(x).MoveToOuterDisposeScope();
    }

    /// <summary>Logits from final hidden states: [b, t, d] -> [b, t, vocab], soft-capped as cap * tanh(z / cap) when the config says (Gemma-2).</summary>
    public Tensor Logits(Tensor hidden)
    {
        var logits = lm_head is not null ? lm_head.forward(hidden) : TiedManagedLogits(hidden) ?? model.Embeddings.Stored.Linear(hidden);
        if (Config.FinalLogitSoftcap is not double cap) return logits;
        using (logits) return logits.div(Scalars.Of(cap)).tanh_().mul_(Scalars.Of(cap));
    }

    /// <summary>Tied embeddings on the decode path: the table's rows as the lm_head matrix through the managed kernels; else null.</summary>
    private Tensor? TiedManagedLogits(Tensor hidden)
    {
        if (!DecodeKernels.Qualifies(hidden, Config.HiddenSize, DecodeKernels.MaxTokens) || model.Embeddings.DecodeView() is not { } table) return null;
        long[] shape = hidden.shape;
        shape[^1] = Config.VocabSize;
        var y = empty(shape, dtype: ScalarType.Float32);
        Projection.Decode((table, 0), DecodeKernels.Floats(hidden), DecodeKernels.Floats(y));
        return y;
    }

    /// <summary>Next-token logits: ids [b, t] -> [b, t, vocab].</summary>
    public Tensor Forward(Tensor ids, KvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        return Logits(Hidden(ids, cache)).MoveToOuterDisposeScope();
    }

    /// <summary>Frees the weights and rotary tables.</summary>
    protected override void Dispose(bool disposing)
    {
        if (disposing) _rope.Dispose();
        base.Dispose(disposing);
    }
}
