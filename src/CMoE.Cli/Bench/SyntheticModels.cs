using CMoE.Modeling;
using static TorchSharp.torch;

namespace CMoE.Cli.Bench;

/// <summary>Named model shapes with random weights, for speed measurements where quality is irrelevant.</summary>
internal static class SyntheticModels
{
    /// <summary>The shapes <c>cmoe bench --synthetic</c> knows.</summary>
    public static readonly IReadOnlyDictionary<string, LlamaConfig> Shapes = new Dictionary<string, LlamaConfig>(StringComparer.Ordinal)
    {
        // TinyLlama-1.1B's layer shape (hidden 2048, FFN 5632, 32 heads, 4 KV heads, head_dim 64), 4 layers, vocab 8192.
        ["tinyllama-4l"] = Shape(hidden: 2048, ffn: 5632, layers: 4, heads: 32, kvHeads: 4, vocab: 8192),
        // The embedded tinyref-llama's shape.
        ["tinyref"] = Shape(hidden: 384, ffn: 1024, layers: 8, heads: 6, kvHeads: 2, vocab: 8192),
        // A toy shape for smoke tests.
        ["micro"] = Shape(hidden: 64, ffn: 256, layers: 2, heads: 4, kvHeads: 2, vocab: 256),
    };

    private static LlamaConfig Shape(int hidden, int ffn, int layers, int heads, int kvHeads, int vocab) => new()
    {
        VocabSize = vocab,
        HiddenSize = hidden,
        IntermediateSize = ffn,
        NumLayers = layers,
        NumHeads = heads,
        NumKeyValueHeads = kvHeads,
        HeadDim = hidden / heads,
        RmsNormEps = 1e-5,
        MaxPositionEmbeddings = 4096,
    };

    /// <summary>The config of a named shape, or a usage error listing the names.</summary>
    public static LlamaConfig Get(string name) => Shapes.TryGetValue(name, out var c)
        ? c
        : throw new UsageException($"--synthetic must be one of {string.Join(", ", Shapes.Keys)} (got '{name}')");

    /// <summary>A model of the shape with N(0, 0.02) weights and unit norms, drawn from <paramref name="seed"/>.</summary>
    public static LlamaForCausalLM Random(LlamaConfig config, int seed)
    {
        var model = new LlamaForCausalLM(config);
        using var noGrad = no_grad();
        using var gen = new TorchSharp.torch.Generator((ulong)seed);
        foreach (var (name, p) in model.state_dict())
        {
            if (name.EndsWith("norm.weight", StringComparison.Ordinal)) p.fill_(1);
            else p.normal_(0, 0.02, gen);
        }
        return model;
    }
}
