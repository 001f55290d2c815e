using System.Text.Json;
using System.Text.Json.Nodes;
using CMoE.Modeling.MoE;
using CMoE.Modeling.Weights;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Modeling.IO;

/// <summary>
/// The carved-model folder: a Hugging Face-style folder a user can inspect with ordinary tools.
/// <list type="bullet">
/// <item><c>config.json</c>: the dense model's config plus a <c>cmoe</c> section:
/// <c>{"format": "cmoe-carved", "version": 1, "layout": "S2A2E16", "hidden_size", "shared_size",
/// "routed_experts", "expert_size", "active_experts", "active_ffn_fraction", "carving": {...provenance}}</c>.</item>
/// <item><c>model.safetensors</c>: dense keys for everything but the FFNs (Hugging Face names), and per
/// layer <c>model.layers.{i}.mlp.</c> + the <see cref="MoeBlock"/> keys (shared_expert.*, experts.*, router.*,
/// shared_neurons, expert_neurons, representatives).</item>
/// <item>the tokenizer files of the source folder, copied unchanged.</item>
/// </list>
/// Weights are fp32 (format version 1, which every release reads) or, from version 2, in the format named by the
/// <c>cmoe</c> section's <c>"weights"</c> (<c>"bf16"</c>: BF16 tensors under the same keys; <c>"int8"</c> / <c>"int8:G"</c>: every
/// weight matrix as I8 values under its key plus F32 scales [..., rows, cols / G] under key + <c>_scale</c>, see
/// <see cref="Weights.StoredWeight"/>); a reader older than version 2 refuses such a folder with "Upgrade CMoE.MLNet"
/// instead of misreading int8 values as weights.
/// The folder is written under a temporary name beside the target and moved into place, so an
/// interrupted write leaves any previous output intact.
/// </summary>
public static class CarvedFolder
{
    /// <summary>Format name in the <c>cmoe</c> section.</summary>
    public const string FormatName = "cmoe-carved";

    /// <summary>The newest format version this library reads (and writes for low-bit weights; fp32 folders are written as version 1).</summary>
    public const int FormatVersion = 2;

    /// <summary>The version a folder with weights in <paramref name="weights"/> is written as.</summary>
    public static int VersionFor(WeightFormat weights) => weights.Kind == WeightKind.Fp32 ? 1 : 2;

    /// <summary>Files copied from the source model folder when present.</summary>
    public static readonly IReadOnlyList<string> TokenizerFiles =
        ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"];

    /// <summary>Whether a config.json object describes a carved model.</summary>
    public static bool IsCarved(JsonObject config) => config["cmoe"] is JsonObject;

    /// <summary>
    /// Writes a carved model to <paramref name="outputFolder"/>. <paramref name="sourceFolder"/> supplies the
    /// original config.json keys and tokenizer files; <paramref name="carving"/> is stored as provenance;
    /// <paramref name="extraFiles"/> (optional) writes further files into the temporary folder before it is moved into place.
    /// </summary>
    public static void Save(LlamaForCausalLM model, string sourceFolder, string outputFolder, string layout, JsonObject? carving = null,
        Action<string>? extraFiles = null)
    {
        var weights = model.Precision.Weights;
        if (model.Precision.Compute != ScalarType.Float32 && weights.Kind != WeightKind.Bf16)
            throw new InvalidOperationException($"A model computing in {model.Precision.Compute} over {weights} weights cannot be saved as a carved folder.");
        var blocks = model.Model.Layers.Select(l => l.Mlp as MoeBlock).ToList();
        if (blocks.Any(b => b is null))
            throw new InvalidOperationException("Every layer must be carved before the model is saved as a carved folder.");
        var shape = blocks[0]!.Shape;
        AtomicFolder.Write(outputFolder, tmp =>
        {
            WriteConfigAndTokenizer(tmp, sourceFolder, shape, layout, carving, weights, blocks.Select(b => b!.RouterThreshold).ToArray());
            var tensors = model.state_dict().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)).ToList();
            SafeTensorsWriter.Write(Path.Combine(tmp, "model.safetensors"), tensors, WeightsMetadataFor(weights));
            extraFiles?.Invoke(tmp);
        });
    }

    /// <summary>The <c>__metadata__</c> of an fp32 carved folder's model.safetensors.</summary>
    internal static IReadOnlyDictionary<string, string> WeightsMetadata { get; } = WeightsMetadataFor(WeightFormat.Fp32);

    /// <summary>The <c>__metadata__</c> of a carved folder's model.safetensors with weights in <paramref name="weights"/>.</summary>
    internal static IReadOnlyDictionary<string, string> WeightsMetadataFor(WeightFormat weights) =>
        new Dictionary<string, string> { ["format"] = "pt", ["cmoe_format"] = $"{FormatName}/{VersionFor(weights)}", ["cmoe_weights"] = weights.ToString() };

    /// <summary>Writes config.json (the source's keys plus the <c>cmoe</c> section) and copies the tokenizer files into <paramref name="folder"/>.</summary>
    internal static void WriteConfigAndTokenizer(string folder, string sourceFolder, MoeShape shape, string layout, JsonObject? carving,
        WeightFormat? weights = null, float?[]? thresholds = null)
    {
        weights ??= WeightFormat.Fp32;
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(sourceFolder, "config.json")))!.AsObject();
        config["cmoe"] = new JsonObject
        {
            ["format"] = FormatName,
            ["version"] = VersionFor(weights),
            ["layout"] = layout,
            ["hidden_size"] = shape.Hidden,
            ["shared_size"] = shape.SharedSize,
            ["routed_experts"] = shape.RoutedExperts,
            ["expert_size"] = shape.ExpertSize,
            ["active_experts"] = shape.ActiveExperts,
            ["active_ffn_fraction"] = shape.ActiveFraction,
            ["carving"] = carving?.DeepClone(),
        };
        if (weights.Kind != WeightKind.Fp32) config["cmoe"]!["weights"] = weights.ToString();
        if (thresholds is not null && thresholds.Any(t => t is not null))
        {
            if (thresholds.Any(t => t is null)) throw new InvalidOperationException("Either every carved layer routes by threshold (dynamic-K) or none does.");
            config["cmoe"]!["router_thresholds"] = new JsonArray(thresholds.Select(t => (JsonNode)JsonValue.Create(t!.Value)).ToArray());
        }
        string dtype = weights.Kind == WeightKind.Bf16 ? "bfloat16" : "float32";
        config["torch_dtype"] = dtype;
        if (config.ContainsKey("dtype")) config["dtype"] = dtype;
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        foreach (var file in TokenizerFiles)
        {
            string src = Path.Combine(sourceFolder, file);
            if (File.Exists(src)) File.Copy(src, Path.Combine(folder, file));
        }
    }

    /// <summary>
    /// The weight format a config.json records (a version-2 carved folder's <c>cmoe.weights</c>), else fp32.
    /// </summary>
    /// <exception cref="CMoEFormatException">The section is from a newer or foreign writer, or names an unknown format.</exception>
    public static WeightFormat RecordedWeights(JsonObject config)
    {
        if (config["cmoe"] is not JsonObject cmoe) return WeightFormat.Fp32;
        CheckFormat(cmoe);
        if (cmoe["weights"] is not { } recorded) return WeightFormat.Fp32;
        try
        {
            return WeightFormat.Parse(recorded.GetValue<string>());
        }
        catch (ArgumentException e)
        {
            throw new CMoEFormatException($"config.json's cmoe section records weights '{recorded}', which this CMoE.MLNet does not know ({e.Message}). Upgrade CMoE.MLNet, or re-carve the model.", e);
        }
    }

    private static void CheckFormat(JsonObject cmoe)
    {
        string format = cmoe["format"]?.GetValue<string>() ?? "";
        int version = cmoe["version"]?.GetValue<int>() ?? 0;
        if (format != FormatName)
            throw new CMoEFormatException($"config.json's cmoe section has format '{format}', expected '{FormatName}'. The folder was not written by CMoE.MLNet.");
        if (version > FormatVersion)
            throw new CMoEFormatException($"The carved folder has format version {version}; this CMoE.MLNet reads up to {FormatVersion}. Upgrade CMoE.MLNet.");
    }

    /// <summary>
    /// The <c>CheckpointLoader.Load</c> hook for carved folders: replaces every dense FFN by an
    /// empty <see cref="MoeBlock"/> of the recorded shape so the weights load into it. Dense configs pass through.
    /// </summary>
    public static void Configure(LlamaForCausalLM model, JsonObject config)
    {
        if (config["cmoe"] is not JsonObject cmoe) return;
        CheckFormat(cmoe);
        MoeShape shape;
        try
        {
            shape = new MoeShape(
                cmoe["hidden_size"]!.GetValue<int>(), cmoe["shared_size"]!.GetValue<int>(), cmoe["routed_experts"]!.GetValue<int>(),
                cmoe["expert_size"]!.GetValue<int>(), cmoe["active_experts"]!.GetValue<int>(), model.Config.Activation);
        }
        catch (Exception e) when (e is NullReferenceException or InvalidOperationException or FormatException)
        {
            throw new CMoEFormatException("config.json's cmoe section lacks hidden_size, shared_size, routed_experts, expert_size or active_experts. Re-carve the model.", e);
        }
        if (shape.Hidden != model.Config.HiddenSize || shape.IntermediateSize != model.Config.IntermediateSize
            || shape.RoutedExperts < 1 || shape.ExpertSize < 1 || shape.ActiveExperts < 1 || shape.ActiveExperts > shape.RoutedExperts)
            throw new CMoEFormatException($"config.json's cmoe section ({shape}) does not fit the model (hidden {model.Config.HiddenSize}, FFN {model.Config.IntermediateSize}). Re-carve the model.");
        float[]? thresholds = null;
        if (cmoe["router_thresholds"] is JsonArray recorded)
        {
            thresholds = recorded.Select(t => t!.GetValue<float>()).ToArray();
            if (thresholds.Length != model.Model.Layers.Count)
                throw new CMoEFormatException($"config.json's cmoe section has {thresholds.Length} router_thresholds for {model.Model.Layers.Count} layers. Re-carve the model.");
        }
        for (int i = 0; i < model.Model.Layers.Count; i++)
            model.Model.Layers[i].ReplaceMlp(new MoeBlock(shape, model.Precision) { RouterThreshold = thresholds?[i] });
    }
}
