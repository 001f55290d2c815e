using CMoE.Modeling.Weights;
using static TorchSharp.torch;

namespace CMoE.Modeling.IO;

/// <summary>
/// Loads any model folder this library reads: a dense Hugging Face LLaMA-family folder, or a carved
/// folder written by <c>cmoe carve</c> (a Hugging Face folder whose config.json has a <c>cmoe</c> section).
/// </summary>
public static class ModelFolder
{
    /// <summary>Loads the folder's model in <paramref name="dtype"/> (activations and weights) onto <paramref name="device"/> (CPU when null).</summary>
    public static LlamaForCausalLM Load(string folder, ScalarType dtype, Device? device = null) =>
        CheckpointLoader.Load(folder, dtype, device, CarvedFolder.Configure);

    /// <summary>
    /// Loads the folder's model with fp32 activations and weights in <paramref name="weights"/> (null: the format the folder
    /// records, fp32 for Hugging Face folders) onto <paramref name="device"/> (CPU when null). int8 weights are quantized
    /// tensor by tensor while loading.
    /// </summary>
    public static LlamaForCausalLM Load(string folder, WeightFormat? weights = null, Device? device = null) =>
        CheckpointLoader.Load(folder, weights is null ? null : Precision.Inference(weights), device, CarvedFolder.Configure);

    /// <summary>The weight format the folder's config.json records (a version-2 carved folder), else fp32.</summary>
    /// <exception cref="CMoEFormatException">The config names an unknown format or comes from a newer writer.</exception>
    public static WeightFormat RecordedWeights(string folder)
    {
        var config = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "config.json")))?.AsObject()
            ?? throw new CMoEFormatException($"'{folder}/config.json' is not a JSON object.");
        return CarvedFolder.RecordedWeights(config);
    }

    /// <summary>Whether the folder holds a carved model (its config.json has a <c>cmoe</c> section).</summary>
    public static bool IsCarved(string folder)
    {
        string path = Path.Combine(folder, "config.json");
        if (!File.Exists(path)) return false;
        try { return System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path)) is System.Text.Json.Nodes.JsonObject o && CarvedFolder.IsCarved(o); }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or ArgumentException or System.Text.DecoderFallbackException) { return false; }
    }
}
