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
        // One tiny model per supported family (vocabulary 8192: tinyref's tokenizer fits), the numeric oracle's inputs
        // (tests/CMoE.Peer families) and the family tests': hidden 64, 4 heads over 2 KV heads, 4 layers.
        ["llama-tiny"] = Family("LlamaForCausalLM", """{"head_dim": 16}"""),
        ["mistral-tiny"] = Family("MistralForCausalLM", """{"head_dim": 16}"""),
        ["qwen2-tiny"] = Family("Qwen2ForCausalLM", """{"head_dim": 16, "tie_word_embeddings": true}"""),
        ["qwen3-tiny"] = Family("Qwen3ForCausalLM", """{"head_dim": 32, "tie_word_embeddings": true}"""),   // head_dim != hidden / heads
        ["phi3-tiny"] = Family("Phi3ForCausalLM", """{"sliding_window": null}"""),
        // query_pre_attn_scalar = head_dim: llama.cpp scales by head_dim^-1/2 whatever the config says (except 27B).
        ["gemma2-tiny"] = Family("Gemma2ForCausalLM", """
            {"head_dim": 32, "query_pre_attn_scalar": 32, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 10.0,
             "sliding_window": 64, "hidden_activation": "gelu_pytorch_tanh"}
            """),
    };

    /// <summary>The names of the tiny per-family shapes.</summary>
    public static readonly IReadOnlyList<string> FamilyShapes = ["llama-tiny", "mistral-tiny", "qwen2-tiny", "qwen3-tiny", "phi3-tiny", "gemma2-tiny"];

    /// <summary>A tiny config of <paramref name="architecture"/> read as its config.json would be (so the family sets its features).</summary>
    private static LlamaConfig Family(string architecture, string extra)
    {
        var json = new System.Text.Json.Nodes.JsonObject
        {
            ["architectures"] = new System.Text.Json.Nodes.JsonArray(architecture),
            ["vocab_size"] = 8192, ["hidden_size"] = 64, ["intermediate_size"] = 128, ["num_hidden_layers"] = 4,
            ["num_attention_heads"] = 4, ["num_key_value_heads"] = 2, ["rms_norm_eps"] = 1e-6, ["rope_theta"] = 10000.0,
            ["max_position_embeddings"] = 2048, ["bos_token_id"] = 1, ["eos_token_id"] = 2,
        };
        foreach (var (key, value) in System.Text.Json.Nodes.JsonNode.Parse(extra)!.AsObject()) json[key] = value?.DeepClone();
        return LlamaConfig.Parse(json, architecture + " (built-in tiny shape)");
    }

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
            if (name.EndsWith("norm.weight", StringComparison.Ordinal)) p.fill_(Scalars.Of(1 - config.NormWeightOffset));   // unit effective scale
            else p.normal_(0, 0.02, gen);
        }
        return model;
    }

    /// <summary>
    /// Writes a Hugging Face-style folder of the shape with random weights (as <see cref="Random"/>), one layer in
    /// memory at a time, in <paramref name="dtype"/> (float32 or bfloat16: drawn in fp32, then rounded), plus the tokenizer files
    /// of <paramref name="tokenizerFolder"/> (its vocabulary must fit).
    /// </summary>
    /// <remarks>
    /// With <paramref name="spread"/> the weights are drawn wider so the model's output is far from uniform (what a numeric
    /// comparison needs): matrices N(0, 0.1), embeddings and lm_head N(0, 0.25), norms 1 + N(0, 0.1) (effective scale, so
    /// Gemma's stored w = N(0, 0.1)). Tensors are stored as the family's checkpoint stores them (Phi-3's fused ones).
    /// </remarks>
    public static void WriteFolder(LlamaConfig config, string folder, int seed, string tokenizerFolder, ScalarType dtype = ScalarType.Float32, bool spread = false)
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
            var specs = Modeling.IO.StateDictLayout.CheckpointSpecs(config).Select(s => s with { DType = dtype }).ToList();
            using var writer = new Modeling.IO.SafeTensorsStreamWriter(Path.Combine(tmp, "model.safetensors"), specs);
            using var gen = new TorchSharp.torch.Generator((ulong)seed);
            using var noGrad = no_grad();
            foreach (var spec in specs)
            {
                bool norm = spec.Name.EndsWith("norm.weight", StringComparison.Ordinal);
                bool table = spec.Name is "model.embed_tokens.weight" or "lm_head.weight";
                using var value = !spread
                    ? (norm ? full(spec.Shape, Scalars.Of(1 - config.NormWeightOffset)) : empty(spec.Shape).normal_(0, 0.02, gen))   // unit effective scale
                    : norm ? empty(spec.Shape).normal_(1 - config.NormWeightOffset, 0.1, gen)
                    : empty(spec.Shape).normal_(0, table ? 0.25 : 0.1, gen);
                using var stored = value.to(dtype);
                writer.Write(spec.Name, stored);
            }
            writer.Complete();
        });
    }
}
