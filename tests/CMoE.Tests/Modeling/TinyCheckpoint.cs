using System.Text.Json.Nodes;
using CMoE.Modeling;
using CMoE.Modeling.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Tests.Modeling;

/// <summary>Writes tiny random Hugging Face-style checkpoints for loader tests.</summary>
internal static class TinyCheckpoint
{
    public static JsonObject Config(string architecture = "LlamaForCausalLM") => new()
    {
        ["architectures"] = new JsonArray(architecture),
        ["hidden_size"] = 32,
        ["intermediate_size"] = 64,
        ["num_hidden_layers"] = 2,
        ["num_attention_heads"] = 4,
        ["num_key_value_heads"] = 2,
        ["vocab_size"] = 50,
        ["rms_norm_eps"] = 1e-5,
        ["rope_theta"] = 10000.0,
        ["max_position_embeddings"] = 128,
        ["tie_word_embeddings"] = false,
        ["hidden_act"] = "silu",
    };

    /// <summary>Creates a folder with config.json and random weights; returns the folder.</summary>
    public static string Write(string dir, JsonObject config, ScalarType fileDType = ScalarType.Float32, bool sharded = false, int seed = 0,
        Func<string, Tensor, Tensor?>? edit = null)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        var parsed = LlamaConfig.Parse(config);
        using var model = new LlamaForCausalLM(parsed);
        var generator = new Generator((ulong)seed);
        var tensors = new List<KeyValuePair<string, Tensor>>();
        foreach (var (name, p) in model.state_dict())
        {
            var value = randn(p.shape, generator: generator).mul(Scalars.Of(0.2));
            if (name.EndsWith("norm.weight")) value = value.add(Scalars.One, Scalars.One);
            value = value.to(fileDType);
            if (edit is not null) value = edit(name, value) ?? value;
            tensors.Add(new(name, value));
        }
        if (!sharded)
        {
            SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), tensors);
        }
        else
        {
            int half = tensors.Count / 2;
            var map = new JsonObject();
            for (int s = 0; s < 2; s++)
            {
                string file = $"model-0000{s + 1}-of-00002.safetensors";
                var part = s == 0 ? tensors.Take(half) : tensors.Skip(half);
                SafeTensorsWriter.Write(Path.Combine(dir, file), part);
                foreach (var (name, _) in part) map[name] = file;
            }
            File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), new JsonObject { ["weight_map"] = map }.ToJsonString());
        }
        foreach (var (_, t) in tensors) t.Dispose();
        return dir;
    }
}

/// <summary>A temporary folder deleted on dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "cmoe-test-" + Guid.NewGuid().ToString("N"));

    public TempDir() => Directory.CreateDirectory(Path);

    public string this[string name] => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}
