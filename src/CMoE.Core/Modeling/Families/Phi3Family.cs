using System.Text.Json.Nodes;
using CMoE.Modeling.IO;

namespace CMoE.Modeling.Families;

/// <summary>
/// Phi-3: LLaMA's math with fused checkpoint tensors: <c>self_attn.qkv_proj</c> holds q | k | v as row blocks and
/// <c>mlp.gate_up_proj</c> gate | up (gate first). They load into our separate q/k/v and gate/up tensors (which carving then
/// splits into experts); carved folders store the separate tensors. <c>sliding_window</c> (when set) applies to every layer
/// as in Hugging Face's Phi3 (llama.cpp ignores it). Partial rotary and longrope scaling are not supported.
/// </summary>
internal sealed class Phi3Family : ModelFamily
{
    public override IReadOnlyList<(string Architecture, string ModelType)> Names { get; } = [("Phi3ForCausalLM", "phi3")];

    internal override LlamaConfig Read(JsonObject obj, LlamaConfig common, string path)
    {
        double partial = LlamaConfig.Dbl(obj, "partial_rotary_factor") ?? 1;
        if (partial != 1)
            throw new CMoEFormatException($"'{path}': partial_rotary_factor {partial} is not supported (Phi-3 with full rotary only).");
        int? window = LlamaConfig.IntOrNull(obj, "sliding_window");
        return base.Read(obj, common, path) with
        {
            SlidingWindow = window,
            SlidingLayers = window is null ? null : Enumerable.Repeat(true, common.NumLayers).ToArray(),
        };
    }

    internal override void Write(JsonObject json, LlamaConfig c)
    {
        base.Write(json, c);
        json["sliding_window"] = c.SlidingWindow;
    }

    public override IReadOnlyList<FusedTensor> FusedTensors { get; } =
    [
        new("self_attn.qkv_proj.weight",
        [
            ("self_attn.q_proj.weight", c => (long)c.NumHeads * c.HeadDim),
            ("self_attn.k_proj.weight", c => (long)c.NumKeyValueHeads * c.HeadDim),
            ("self_attn.v_proj.weight", c => (long)c.NumKeyValueHeads * c.HeadDim),
        ]),
        new("mlp.gate_up_proj.weight", [("mlp.gate_proj.weight", c => c.IntermediateSize), ("mlp.up_proj.weight", c => c.IntermediateSize)]),
    ];

    internal override string GgufArchitecture => "phi3";

    /// <summary>llama.cpp's phi3 tensors: fused <c>attn_qkv</c> and <c>ffn_up</c> (gate | up), no q/k permutation.</summary>
    internal override void GgufLayer(GgufTensors t, LlamaConfig c, int i)
    {
        string hf = $"model.layers.{i}.", b = $"blk.{i}.";
        long d = c.HiddenSize, q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKeyValueHeads * c.HeadDim, f = c.IntermediateSize;
        t.Norm(b + "attn_norm.weight", hf + "input_layernorm.weight", d);
        t.Fused(b + "attn_qkv.weight", [(hf + "self_attn.q_proj.weight", q), (hf + "self_attn.k_proj.weight", kv), (hf + "self_attn.v_proj.weight", kv)], d);
        t.Matrix(b + "attn_output.weight", hf + "self_attn.o_proj.weight", d, q);
        t.Norm(b + "ffn_norm.weight", hf + "post_attention_layernorm.weight", d);
        t.Fused(b + "ffn_up.weight", [(hf + "mlp.gate_proj.weight", f), (hf + "mlp.up_proj.weight", f)], d);
        t.Matrix(b + "ffn_down.weight", hf + "mlp.down_proj.weight", d, f);
    }
}
