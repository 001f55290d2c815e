using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using CMoE.Modeling.IO;
using static TorchSharp.torch;

namespace CMoE.Training;

/// <summary>
/// A resumable fine-tuning checkpoint folder, written atomically:
/// <list type="bullet">
/// <item><c>checkpoint.json</c>: <c>{"format": "cmoe-finetune-checkpoint", "version": 1, "step", "mode", "lora_rank",
/// "lora_alpha", "seed", "batch"}</c>.</item>
/// <item><c>state.safetensors</c>: every tensor training changes, fp32 (LoRA <c>*.lora_A</c>/<c>*.lora_B</c>, or the
/// trained weights in full mode, and each layer's <c>mlp.router.scale</c> and <c>mlp.router.bias</c>).</item>
/// </list>
/// What resumes: adapters/weights, u, b, the step counter (so the window order, dropout masks and learning-rate
/// schedule continue where they stopped). What does not: Adam's moment estimates (they restart from zero).
/// </summary>
public static class FineTuneCheckpoint
{
    /// <summary>Format name in checkpoint.json.</summary>
    public const string FormatName = "cmoe-finetune-checkpoint";

    /// <summary>Format version written and read.</summary>
    public const int FormatVersion = 1;

    internal static void Save(string folder, FineTuneOptions options, int step, IEnumerable<KeyValuePair<string, Tensor>> state)
    {
        var header = new JsonObject
        {
            ["format"] = FormatName,
            ["version"] = FormatVersion,
            ["step"] = step,
            ["mode"] = options.Mode.ToString().ToLowerInvariant(),
            ["lora_rank"] = options.LoraRank,
            ["lora_alpha"] = options.LoraAlpha,
            ["seed"] = options.Seed,
            ["batch"] = options.BatchSize,
        };
        AtomicFolder.Write(folder, tmp =>
        {
            File.WriteAllText(Path.Combine(tmp, "checkpoint.json"), header.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            using var scope = NewDisposeScope();
            var cpu = state.Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value.detach().to(ScalarType.Float32).cpu())).ToList();
            SafeTensorsWriter.Write(Path.Combine(tmp, "state.safetensors"), cpu,
                new Dictionary<string, string> { ["cmoe_format"] = $"{FormatName}/{FormatVersion}", ["step"] = step.ToString(CultureInfo.InvariantCulture) });
        });
    }

    /// <summary>Copies the checkpoint's tensors into <paramref name="state"/>; returns the step it was taken at.</summary>
    internal static int Load(string folder, FineTuneOptions options, IEnumerable<KeyValuePair<string, Tensor>> state)
    {
        string json = Path.Combine(folder, "checkpoint.json");
        if (!File.Exists(json)) throw new FileNotFoundException($"'{folder}' holds no checkpoint.json; it is not a fine-tuning checkpoint.");
        var header = JsonNode.Parse(File.ReadAllText(json))!.AsObject();
        if (header["format"]?.GetValue<string>() != FormatName)
            throw new CMoEFormatException($"'{json}' is not a {FormatName} file.");
        int version = header["version"]?.GetValue<int>() ?? 0;
        if (version > FormatVersion) throw new CMoEFormatException($"Checkpoint version {version} is newer than this CMoE.MLNet reads ({FormatVersion}); upgrade.");
        string mode = header["mode"]?.GetValue<string>() ?? "";
        int rank = header["lora_rank"]?.GetValue<int>() ?? 0;
        int seed = header["seed"]?.GetValue<int>() ?? 0;
        int batch = header["batch"]?.GetValue<int>() ?? 0;
        if (mode != options.Mode.ToString().ToLowerInvariant() || (options.Mode == FineTuneMode.Lora && rank != options.LoraRank)
            || seed != options.Seed || batch != options.BatchSize)
            throw new ArgumentException($"The checkpoint in '{folder}' was taken with mode {mode}, rank {rank}, seed {seed}, batch {batch}; resume with the same options.");
        CopyInto(Path.Combine(folder, "state.safetensors"), state);
        return header["step"]!.GetValue<int>();
    }

    /// <summary>Copies every tensor of <paramref name="state"/> from the safetensors file (names and shapes must match).</summary>
    internal static void CopyInto(string path, IEnumerable<KeyValuePair<string, Tensor>> state)
    {
        using var file = SafeTensorsFile.Open(path);
        using var noGrad = no_grad();
        foreach (var (name, target) in state)
        {
            if (!file.Contains(name)) throw new CMoEFormatException($"'{path}' lacks '{name}'; it belongs to another model or another LoRA rank.");
            using var value = file.Load(name);
            if (!value.shape.SequenceEqual(target.shape))
                throw new CMoEFormatException($"Tensor '{name}' in '{path}' has shape [{string.Join(", ", value.shape)}], the model expects [{string.Join(", ", target.shape)}].");
            target.copy_(value);
        }
    }
}
