using System.Text.Json.Nodes;
using CMoE.Modeling.IO;

namespace CMoE.Modeling.Families;

/// <summary>
/// Where one Hugging Face architecture family differs from LLaMA, in one object per family (one file each): which
/// config.json keys it reads and writes (and so which model features it switches on: q/k norms, GeGLU, Gemma's norms,
/// soft-capping, sliding windows), which checkpoint tensors are fused (Phi-3's <c>qkv_proj</c>, <c>gate_up_proj</c>) and how
/// llama.cpp's converter writes it as GGUF (architecture name, q/k permutation, tensor names, metadata). The model modules
/// read only the feature values on <see cref="LlamaConfig"/>, never the family name. A new family is a new subclass
/// listed in <see cref="All"/>.
/// </summary>
public abstract class ModelFamily
{
    /// <summary>Every supported family; an architecture none of them names is rejected with this list.</summary>
    public static IReadOnlyList<ModelFamily> All { get; } =
        [new LlamaFamily(), new Qwen2Family(), new Qwen3Family(), new Phi3Family(), new Gemma2Family()];

    /// <summary>The family of a Hugging Face architecture name (e.g. <c>Qwen3ForCausalLM</c>), or null when none supports it.</summary>
    public static ModelFamily? Find(string architecture) => All.FirstOrDefault(f => f.Names.Any(n => n.Architecture == architecture));

    /// <summary>The family of an architecture this build supports.</summary>
    /// <exception cref="CMoEFormatException">No family supports it.</exception>
    public static ModelFamily For(string architecture) => Find(architecture)
        ?? throw new CMoEFormatException($"Architecture '{architecture}' is not supported. Supported: {string.Join(", ", All.SelectMany(f => f.Names).Select(n => n.Architecture))}.");

    /// <summary>The architectures (config.json <c>architectures[0]</c>) and their <c>model_type</c>s.</summary>
    public abstract IReadOnlyList<(string Architecture, string ModelType)> Names { get; }

    /// <summary>The <c>model_type</c> written for <paramref name="architecture"/>.</summary>
    public string ModelType(string architecture) => Names.First(n => n.Architecture == architecture).ModelType;

    /// <summary>
    /// Applies the family's own config.json keys to the common ones already read (<paramref name="common"/>): the
    /// features it switches on. The default reads a SiLU <c>hidden_act</c> and nothing else (LLaMA).
    /// </summary>
    internal virtual LlamaConfig Read(JsonObject obj, LlamaConfig common, string path)
    {
        string act = LlamaConfig.Str(obj, "hidden_act") ?? "silu";
        if (act != "silu")
            throw new CMoEFormatException($"'{path}': hidden_act '{act}' is not supported for {common.Architecture}; CMoE carves SwiGLU (silu) FFNs of this family.");
        return common with
        {
            QkvBias = LlamaConfig.Bool(obj, "attention_bias") ?? false,
            OutputBias = LlamaConfig.Bool(obj, "attention_bias") ?? false,
        };
    }

    /// <summary>Writes the family's own keys (those <see cref="Read"/> reads) into a config object.</summary>
    internal virtual void Write(JsonObject json, LlamaConfig c) => json["attention_bias"] = c.QkvBias;

    /// <summary>Checkpoint tensors that hold several of our tensors as row blocks (Phi-3); empty for most families.</summary>
    public virtual IReadOnlyList<FusedTensor> FusedTensors => [];

    /// <summary>llama.cpp's architecture name (<c>general.architecture</c>, the prefix of the model's metadata keys).</summary>
    internal abstract string GgufArchitecture { get; }

    /// <summary>
    /// Writes layer <paramref name="i"/>'s tensors the way llama.cpp's convert_hf_to_gguf.py does for this family. The default is
    /// LLaMA's layout (q/k rows permuted only when <see cref="GgufPermutesQk"/>).
    /// </summary>
    internal virtual void GgufLayer(GgufTensors t, LlamaConfig c, int i)
    {
        string hf = $"model.layers.{i}.", b = $"blk.{i}.";
        t.Norm(b + "attn_norm.weight", hf + "input_layernorm.weight", c.HiddenSize);
        GgufAttention(t, c, hf, b);
        t.Norm(b + "ffn_norm.weight", hf + "post_attention_layernorm.weight", c.HiddenSize);
        GgufFfn(t, c, hf, b);
    }

    /// <summary>q, k, v (and their biases), the output projection of one layer in LLaMA's layout.</summary>
    internal void GgufAttention(GgufTensors t, LlamaConfig c, string hf, string b)
    {
        long d = c.HiddenSize, qRows = (long)c.NumHeads * c.HeadDim, kvRows = (long)c.NumKeyValueHeads * c.HeadDim;
        int qPerm = GgufPermutesQk ? c.NumHeads : 0, kPerm = GgufPermutesQk ? c.NumKeyValueHeads : 0;
        t.Matrix(b + "attn_q.weight", hf + "self_attn.q_proj.weight", qRows, d, qPerm);
        t.Matrix(b + "attn_k.weight", hf + "self_attn.k_proj.weight", kvRows, d, kPerm);
        t.Matrix(b + "attn_v.weight", hf + "self_attn.v_proj.weight", kvRows, d);
        if (c.QkvBias)
        {
            t.Vector(b + "attn_q.bias", hf + "self_attn.q_proj.bias", qRows, qPerm);
            t.Vector(b + "attn_k.bias", hf + "self_attn.k_proj.bias", kvRows, kPerm);
            t.Vector(b + "attn_v.bias", hf + "self_attn.v_proj.bias", kvRows);
        }
        t.Matrix(b + "attn_output.weight", hf + "self_attn.o_proj.weight", d, qRows);
        if (c.OutputBias) t.Vector(b + "attn_output.bias", hf + "self_attn.o_proj.bias", d);
    }

    /// <summary>gate, up, down of one layer in LLaMA's layout.</summary>
    internal static void GgufFfn(GgufTensors t, LlamaConfig c, string hf, string b)
    {
        long d = c.HiddenSize, f = c.IntermediateSize;
        t.Matrix(b + "ffn_gate.weight", hf + "mlp.gate_proj.weight", f, d);
        t.Matrix(b + "ffn_up.weight", hf + "mlp.up_proj.weight", f, d);
        t.Matrix(b + "ffn_down.weight", hf + "mlp.down_proj.weight", d, f);
    }

    /// <summary>Whether llama.cpp's converter permutes q/k rows to interleaved RoPE pairs (LLaMA-family only).</summary>
    internal virtual bool GgufPermutesQk => false;

    /// <summary>The family's metadata keys beyond the common ones (written under <see cref="GgufArchitecture"/>).</summary>
    internal virtual void GgufMetadata(GgufMetadata meta, LlamaConfig c)
    {
    }
}

/// <summary>
/// A checkpoint tensor <paramref name="Fused"/> (a key under <c>model.layers.{i}.</c>) that holds the tensors
/// <paramref name="Parts"/> as consecutive row blocks, each <c>Rows(config)</c> rows.
/// </summary>
public sealed record FusedTensor(string Fused, IReadOnlyList<(string Key, Func<LlamaConfig, long> Rows)> Parts);
