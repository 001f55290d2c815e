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
        // TinyLlama-1.1B's full shape: 22 layers, vocab 32000 (1.1B parameters, 4.4 GB in fp32): a model for memory tests.
        ["tinyllama-1.1b"] = Shape(hidden: 2048, ffn: 5632, layers: 22, heads: 32, kvHeads: 4, vocab: 32000),
        // Llama-2-7B's shape (the paper's model): 32 layers, 32 heads, 32 KV heads, vocab 32000; 6.7B parameters, 13.5 GB in bf16.
        ["llama2-7b"] = Shape(hidden: 4096, ffn: 11008, layers: 32, heads: 32, kvHeads: 32, vocab: 32000),
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
            if (name.EndsWith("norm.weight", StringComparison.Ordinal)) p.fill_(Scalars.One);
            else p.normal_(0, 0.02, gen);
        }
        return model;
    }

    /// <summary>
    /// Writes a Hugging Face-style folder of the shape with random weights (as <see cref="Random"/>), one layer in
    /// memory at a time, in <paramref name="dtype"/> (float32 or bfloat16: drawn in fp32, then rounded), plus the tokenizer files
    /// of <paramref name="tokenizerFolder"/> (its vocabulary must fit).
    /// </summary>
    public static void WriteFolder(LlamaConfig config, string folder, int seed, string tokenizerFolder, ScalarType dtype = ScalarType.Float32)
    {
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16))
            throw new UsageException($"--dtype must be fp32 or bf16 (got {dtype})");
        int tokenizerVocab = Modeling.Tokenization.TokenizerLoader.FromFolder(tokenizerFolder).VocabSize;
        if (tokenizerVocab > config.VocabSize)
            throw new ArgumentException($"The tokenizer in '{tokenizerFolder}' has {tokenizerVocab} tokens but the shape's vocabulary is {config.VocabSize}; pick a shape with a vocabulary of at least {tokenizerVocab} or pass --tokenizer with a smaller one.");
        Modeling.IO.AtomicFolder.Write(folder, tmp =>
        {
            var json = config.ToJson();
            json["torch_dtype"] = dtype == ScalarType.BFloat16 ? "bfloat16" : "float32";
            File.WriteAllText(Path.Combine(tmp, "config.json"), json.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            foreach (var file in Modeling.IO.CarvedFolder.TokenizerFiles)
            {
                string src = Path.Combine(tokenizerFolder, file);
                if (File.Exists(src)) File.Copy(src, Path.Combine(tmp, file));
            }
            var specs = Modeling.IO.StateDictLayout.Specs(config).Select(s => s with { DType = dtype }).ToList();
            using var writer = new Modeling.IO.SafeTensorsStreamWriter(Path.Combine(tmp, "model.safetensors"), specs);
            using var gen = new TorchSharp.torch.Generator((ulong)seed);
            using var noGrad = no_grad();
            foreach (var spec in specs)
            {
                using var value = spec.Name.EndsWith("norm.weight", StringComparison.Ordinal)
                    ? ones(spec.Shape)
                    : empty(spec.Shape).normal_(0, 0.02, gen);
                using var stored = value.to(dtype);
                writer.Write(spec.Name, stored);
            }
            writer.Complete();
        });
    }
}
