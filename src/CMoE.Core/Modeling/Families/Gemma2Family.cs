using System.Text.Json.Nodes;
using CMoE.Modeling.IO;

namespace CMoE.Modeling.Families;

/// <summary>
/// Gemma-2: GeGLU FFN (<c>gelu_pytorch_tanh</c>), embeddings scaled by sqrt(hidden), RMSNorm as x * (1 + w), a norm after
/// attention and around the FFN (<c>post_attention_layernorm</c>, <c>pre_feedforward_layernorm</c>,
/// <c>post_feedforward_layernorm</c>), attention scores scaled by <c>query_pre_attn_scalar</c>^-1/2 and soft-capped
/// (<c>attn_logit_softcapping</c>), final logits soft-capped (<c>final_logit_softcapping</c>), a sliding window on the layers
/// <c>layer_types</c> names (by default the even ones, as Hugging Face's Gemma2 and llama.cpp's swa pattern 2), tied embeddings.
/// </summary>
internal sealed class Gemma2Family : ModelFamily
{
    public override IReadOnlyList<(string Architecture, string ModelType)> Names { get; } = [("Gemma2ForCausalLM", "gemma2")];

    internal override LlamaConfig Read(JsonObject obj, LlamaConfig common, string path)
    {
        string act = LlamaConfig.Str(obj, "hidden_activation") ?? LlamaConfig.Str(obj, "hidden_act") ?? "gelu_pytorch_tanh";
        if (act != "gelu_pytorch_tanh")
            throw new CMoEFormatException($"'{path}': hidden_activation '{act}' is not supported for Gemma-2 (gelu_pytorch_tanh only).");
        int window = LlamaConfig.IntOrNull(obj, "sliding_window") ?? 4096;
        bool[] sliding = obj["layer_types"] is JsonArray types
            ? types.Select(t => t?.GetValue<string>() == "sliding_attention").ToArray()
            : Enumerable.Range(0, common.NumLayers).Select(i => i % 2 == 0).ToArray();   // HF: bool((i + 1) % 2); llama.cpp: il % 2 < 1
        if (sliding.Length != common.NumLayers)
            throw new CMoEFormatException($"'{path}': layer_types names {sliding.Length} layers but num_hidden_layers is {common.NumLayers}. Fix config.json.");
        return common with
        {
            Activation = GatedActivation.GeluTanh,
            NormWeightOffset = 1,
            ScaleEmbeddings = true,
            SandwichNorms = true,
            AttentionSoftcap = LlamaConfig.Dbl(obj, "attn_logit_softcapping"),
            FinalLogitSoftcap = LlamaConfig.Dbl(obj, "final_logit_softcapping"),
            QueryPreAttnScalar = LlamaConfig.Dbl(obj, "query_pre_attn_scalar") ?? common.HeadDim,
            SlidingWindow = window,
            SlidingLayers = sliding,
            TieWordEmbeddings = LlamaConfig.Bool(obj, "tie_word_embeddings") ?? true,
        };
    }

    internal override void Write(JsonObject json, LlamaConfig c)
    {
        json["hidden_activation"] = "gelu_pytorch_tanh";
        json["attn_logit_softcapping"] = c.AttentionSoftcap;
        json["final_logit_softcapping"] = c.FinalLogitSoftcap;
        json["query_pre_attn_scalar"] = c.QueryPreAttnScalar;
        json["sliding_window"] = c.SlidingWindow;
        json["layer_types"] = new JsonArray(c.SlidingLayers!.Select(s => (JsonNode?)JsonValue.Create(s ? "sliding_attention" : "full_attention")).ToArray());
    }

    internal override string GgufArchitecture => "gemma2";

    /// <summary>llama.cpp's gemma2 tensors: <c>post_attention_norm</c>, <c>ffn_norm</c> (the pre-FFN norm), <c>post_ffw_norm</c>; norms + 1.</summary>
    internal override void GgufLayer(GgufTensors t, LlamaConfig c, int i)
    {
        string hf = $"model.layers.{i}.", b = $"blk.{i}.";
        long d = c.HiddenSize;
        t.Norm(b + "attn_norm.weight", hf + "input_layernorm.weight", d);
        GgufAttention(t, c, hf, b);
        t.Norm(b + "post_attention_norm.weight", hf + "post_attention_layernorm.weight", d);
        t.Norm(b + "ffn_norm.weight", hf + "pre_feedforward_layernorm.weight", d);
        GgufFfn(t, c, hf, b);
        t.Norm(b + "post_ffw_norm.weight", hf + "post_feedforward_layernorm.weight", d);
    }

    internal override void GgufMetadata(GgufMetadata meta, LlamaConfig c)
    {
        string a = GgufArchitecture;
        if (c.AttentionSoftcap is double attn) meta.Float32(a + ".attn_logit_softcapping", (float)attn);
        if (c.FinalLogitSoftcap is double final) meta.Float32(a + ".final_logit_softcapping", (float)final);
        meta.UInt32(a + ".attention.sliding_window", (uint)c.SlidingWindow!.Value);
    }
}
