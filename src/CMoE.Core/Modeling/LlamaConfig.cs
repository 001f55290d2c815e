using System.Text.Json.Nodes;
using CMoE.Modeling.Families;

namespace CMoE.Modeling;

/// <summary>
/// The architecture of a LLaMA-family decoder, read from a Hugging Face <c>config.json</c>: the keys every family shares,
/// then the feature values its <see cref="ModelFamily"/> reads (q/k norms, GeGLU, Gemma's norms, soft-capping, sliding
/// windows). Supported architectures: <see cref="SupportedArchitectures"/> (one family file each under <c>Families/</c>).
/// </summary>
public sealed record LlamaConfig
{
    /// <summary>Architectures this loader implements.</summary>
    public static readonly IReadOnlyList<string> SupportedArchitectures =
        ModelFamily.All.SelectMany(f => f.Names).Select(n => n.Architecture).ToArray();

    /// <summary>The Hugging Face architecture name.</summary>
    public string Architecture { get; init; } = "LlamaForCausalLM";
    /// <summary>The family that reads and writes this architecture (config keys, fused tensors, GGUF layout).</summary>
    public ModelFamily Family => ModelFamily.For(Architecture);
    /// <summary>Vocabulary size.</summary>
    public int VocabSize { get; init; }
    /// <summary>Model (residual stream) width d.</summary>
    public int HiddenSize { get; init; }
    /// <summary>FFN width d_h.</summary>
    public int IntermediateSize { get; init; }
    /// <summary>Number of decoder layers.</summary>
    public int NumLayers { get; init; }
    /// <summary>Number of query heads.</summary>
    public int NumHeads { get; init; }
    /// <summary>Number of key/value heads (GQA when smaller than <see cref="NumHeads"/>).</summary>
    public int NumKeyValueHeads { get; init; }
    /// <summary>Width of one head.</summary>
    public int HeadDim { get; init; }
    /// <summary>RMSNorm epsilon.</summary>
    public double RmsNormEps { get; init; } = 1e-6;
    /// <summary>RoPE base.</summary>
    public double RopeTheta { get; init; } = 10000;
    /// <summary>RoPE scaling type: default, linear or llama3.</summary>
    public string RopeType { get; init; } = "default";
    /// <summary>RoPE scaling factor (linear, llama3).</summary>
    public double RopeFactor { get; init; } = 1;
    /// <summary>llama3 RoPE: low-frequency factor.</summary>
    public double RopeLowFreqFactor { get; init; } = 1;
    /// <summary>llama3 RoPE: high-frequency factor.</summary>
    public double RopeHighFreqFactor { get; init; } = 4;
    /// <summary>llama3 RoPE: the original context length.</summary>
    public int RopeOriginalMaxPositions { get; init; } = 8192;
    /// <summary>Maximum positions the model was trained for.</summary>
    public int MaxPositionEmbeddings { get; init; } = 2048;
    /// <summary>Whether lm_head shares the embedding matrix.</summary>
    public bool TieWordEmbeddings { get; init; }
    /// <summary>Whether q/k/v projections carry a bias (Qwen2; LLaMA's attention_bias).</summary>
    public bool QkvBias { get; init; }
    /// <summary>Whether the output projection carries a bias (LLaMA's attention_bias).</summary>
    public bool OutputBias { get; init; }
    /// <summary>BOS token id, when the config names one.</summary>
    public int? BosTokenId { get; init; }
    /// <summary>EOS token id, when the config names one.</summary>
    public int? EosTokenId { get; init; }
    /// <summary>The dtype the checkpoint was saved in (informational).</summary>
    public string? TorchDType { get; init; }

    // Family features (set by the family's Read; LLaMA's values by default).
    /// <summary>The gated FFN's activation: SiLU (SwiGLU) or tanh-GELU (GeGLU, Gemma-2).</summary>
    public GatedActivation Activation { get; init; } = GatedActivation.Silu;
    /// <summary>Whether each query and key head is RMS-normalised (weight [head_dim]) before RoPE (Qwen3).</summary>
    public bool QkNorm { get; init; }
    /// <summary>RMSNorm scales by (offset + w): 0 for LLaMA, 1 for Gemma (x * (1 + w)).</summary>
    public double NormWeightOffset { get; init; }
    /// <summary>Whether embeddings are multiplied by sqrt(hidden) in the compute dtype (Gemma).</summary>
    public bool ScaleEmbeddings { get; init; }
    /// <summary>Whether a layer has a norm after attention and after the FFN besides the pre-norms (Gemma-2).</summary>
    public bool SandwichNorms { get; init; }
    /// <summary>Attention scores become cap * tanh(scores / cap) when set (Gemma-2).</summary>
    public double? AttentionSoftcap { get; init; }
    /// <summary>Logits become cap * tanh(logits / cap) when set (Gemma-2).</summary>
    public double? FinalLogitSoftcap { get; init; }
    /// <summary>Attention scores are scaled by this^-1/2 instead of head_dim^-1/2 when set (Gemma-2).</summary>
    public double? QueryPreAttnScalar { get; init; }
    /// <summary>The sliding window (a query at i sees keys j with i - j &lt; window) of the layers <see cref="SlidingLayers"/> marks.</summary>
    public int? SlidingWindow { get; init; }
    /// <summary>Per layer, whether it uses the sliding window; null when none does.</summary>
    public IReadOnlyList<bool>? SlidingLayers { get; init; }

    /// <summary>The attention score scale: query_pre_attn_scalar^-1/2 when set, else head_dim^-1/2.</summary>
    public double AttentionScale => 1.0 / Math.Sqrt(QueryPreAttnScalar ?? HeadDim);

    /// <summary>The window of layer <paramref name="layer"/>, or null when it attends to every earlier position.</summary>
    public int? WindowOf(int layer) => SlidingLayers is { } s && s[layer] ? SlidingWindow : null;

    /// <summary>Reads and validates <c>config.json</c> in a model folder (or the file itself).</summary>
    /// <exception cref="CMoEFormatException">A key is missing or invalid, or the architecture is not supported.</exception>
    public static LlamaConfig Load(string folderOrFile)
    {
        string path = Directory.Exists(folderOrFile) ? Path.Combine(folderOrFile, "config.json") : folderOrFile;
        if (!File.Exists(path))
            throw new FileNotFoundException($"No config.json at '{path}'. Point --model at a Hugging Face model folder (config.json, *.safetensors, tokenizer).", path);
        return FormatGuard.Run(path, "Fix or re-download config.json.", () =>
        {
            if (JsonNode.Parse(FormatGuard.ReadText(path, "Fix or re-download config.json.")) is not JsonObject obj)
                throw new CMoEFormatException($"'{path}' is not a JSON object. Fix or re-download config.json.");
            return Parse(obj, path);
        });
    }

    /// <summary>Parses a config.json object; <paramref name="path"/> is used in messages.</summary>
    public static LlamaConfig Parse(JsonObject obj, string path = "config.json")
    {
        string arch = obj["architectures"] is JsonArray { Count: > 0 } archs ? archs[0]!.GetValue<string>() : ArchitectureFromModelType(obj, path);
        var family = ModelFamily.Find(arch)
            ?? throw new CMoEFormatException($"'{path}': architecture '{arch}' is not supported. Supported: {string.Join(", ", SupportedArchitectures)} (LLaMA-family decoders with a gated FFN).");
        int hidden = Int(obj, "hidden_size", path);
        int heads = Int(obj, "num_attention_heads", path);
        int kvHeads = IntOr(obj, "num_key_value_heads", heads);
        int headDim = IntOr(obj, "head_dim", heads > 0 ? hidden / heads : 0);
        var (theta, ropeType, rope) = ReadRope(obj);
        var config = new LlamaConfig
        {
            Architecture = arch,
            VocabSize = Int(obj, "vocab_size", path),
            HiddenSize = hidden,
            IntermediateSize = Int(obj, "intermediate_size", path),
            NumLayers = Int(obj, "num_hidden_layers", path),
            NumHeads = heads,
            NumKeyValueHeads = kvHeads,
            HeadDim = headDim,
            RmsNormEps = Dbl(obj, "rms_norm_eps") ?? 1e-6,
            RopeTheta = theta,
            RopeType = ropeType,
            RopeFactor = Dbl(rope, "factor") ?? 1,
            RopeLowFreqFactor = Dbl(rope, "low_freq_factor") ?? 1,
            RopeHighFreqFactor = Dbl(rope, "high_freq_factor") ?? 4,
            RopeOriginalMaxPositions = (int)(Dbl(rope, "original_max_position_embeddings") ?? 8192),
            MaxPositionEmbeddings = IntOr(obj, "max_position_embeddings", 2048),
            TieWordEmbeddings = Bool(obj, "tie_word_embeddings") ?? false,
            BosTokenId = TokenId(obj, "bos_token_id"),
            EosTokenId = TokenId(obj, "eos_token_id"),
            TorchDType = Str(obj, "torch_dtype") ?? Str(obj, "dtype"),
        };
        if (Bool(obj, "mlp_bias") == true)
            throw new CMoEFormatException($"'{path}': mlp_bias = true is not supported; CMoE carves bias-free gated FFNs.");
        config = family.Read(obj, config, path);
        config.Validate(path);
        return config;
    }

    /// <summary>Checks the sizes are positive and consistent.</summary>
    public void Validate(string path = "config.json")
    {
        void Require(bool ok, string what)
        {
            if (!ok) throw new CMoEFormatException($"'{path}': {what}. Fix config.json.");
        }
        Require(VocabSize > 0 && HiddenSize > 0 && IntermediateSize > 0 && NumLayers > 0 && NumHeads > 0 && NumKeyValueHeads > 0 && HeadDim > 0,
            "sizes must be positive (vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim)");
        Require(NumHeads % NumKeyValueHeads == 0, $"num_attention_heads ({NumHeads}) must be a multiple of num_key_value_heads ({NumKeyValueHeads})");
        Require(HeadDim % 2 == 0, $"head_dim ({HeadDim}) must be even for rotary embeddings");
        Require(RopeTheta > 0, "rope_theta must be positive");
        Require(RopeType is "default" or "linear" or "llama3", $"rope type '{RopeType}' is not supported (default, linear, llama3)");
    }

    /// <summary>Writes the keys this loader reads back into a config object (used for carved folders).</summary>
    public JsonObject ToJson()
    {
        var json = CommonJson();
        Family.Write(json, this);
        return json;
    }

    private JsonObject CommonJson() => new()
    {
        ["architectures"] = new JsonArray(Architecture),
        ["model_type"] = Family.ModelType(Architecture),
        ["vocab_size"] = VocabSize,
        ["hidden_size"] = HiddenSize,
        ["intermediate_size"] = IntermediateSize,
        ["num_hidden_layers"] = NumLayers,
        ["num_attention_heads"] = NumHeads,
        ["num_key_value_heads"] = NumKeyValueHeads,
        ["head_dim"] = HeadDim,
        ["hidden_act"] = Activation.ConfigName(),
        ["rms_norm_eps"] = RmsNormEps,
        ["rope_theta"] = RopeTheta,
        ["rope_scaling"] = RopeType == "default" ? null : new JsonObject
        {
            ["rope_type"] = RopeType,
            ["factor"] = RopeFactor,
            ["low_freq_factor"] = RopeLowFreqFactor,
            ["high_freq_factor"] = RopeHighFreqFactor,
            ["original_max_position_embeddings"] = RopeOriginalMaxPositions,
        },
        ["max_position_embeddings"] = MaxPositionEmbeddings,
        ["tie_word_embeddings"] = TieWordEmbeddings,
        ["mlp_bias"] = false,
        ["bos_token_id"] = BosTokenId,
        ["eos_token_id"] = EosTokenId,
        ["torch_dtype"] = TorchDType,
    };

    private static (double Theta, string Type, JsonObject? Params) ReadRope(JsonObject obj)
    {
        // Newer configs (transformers 5) write rope_parameters {rope_theta, rope_type, ...};
        // older ones a top-level rope_theta and an optional rope_scaling {type|rope_type, factor, ...}.
        var rope = obj["rope_parameters"] as JsonObject ?? obj["rope_scaling"] as JsonObject;
        double theta = Dbl(obj["rope_parameters"] as JsonObject, "rope_theta") ?? Dbl(obj, "rope_theta") ?? 10000;
        string type = Str(rope, "rope_type") ?? Str(rope, "type") ?? "default";
        return (theta, type, rope);
    }

    private static string ArchitectureFromModelType(JsonObject obj, string path) => Str(obj, "model_type") switch
    {
        null => throw new CMoEFormatException($"'{path}' names neither 'architectures' nor 'model_type'. Add \"architectures\": [\"LlamaForCausalLM\"]."),
        var type => ModelFamily.All.SelectMany(f => f.Names).FirstOrDefault(n => n.ModelType == type).Architecture ?? type,
    };

    private static int Int(JsonObject obj, string key, string path)
    {
        if (obj[key] is not JsonValue v || !v.TryGetValue(out int value))
        {
            if (obj[key] is JsonValue d && d.TryGetValue(out double dv) && dv == Math.Floor(dv)) return (int)dv;
            throw new CMoEFormatException($"'{path}' lacks the integer key '{key}'. Add it (see the model's original config.json).");
        }
        return value;
    }

    internal static int? IntOrNull(JsonObject obj, string key) =>
        obj[key] is JsonValue v && v.TryGetValue(out int value) ? value : null;

    private static int IntOr(JsonObject obj, string key, int fallback) =>
        obj[key] is JsonValue v && v.TryGetValue(out int value) ? value : fallback;

    private static int? TokenId(JsonObject obj, string key) => obj[key] switch
    {
        JsonValue v when v.TryGetValue(out int id) => id,
        JsonArray { Count: > 0 } a when a[0] is JsonValue f && f.TryGetValue(out int first) => first,
        _ => null,
    };

    internal static double? Dbl(JsonObject? obj, string key) =>
        obj?[key] is JsonValue v && v.TryGetValue(out double value) ? value : null;

    internal static bool? Bool(JsonObject obj, string key) =>
        obj[key] is JsonValue v && v.TryGetValue(out bool value) ? value : null;

    internal static string? Str(JsonObject? obj, string key) =>
        obj?[key] is JsonValue v && v.TryGetValue(out string? value) ? value : null;
}
