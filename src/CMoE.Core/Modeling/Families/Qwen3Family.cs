using System.Text.Json.Nodes;
using CMoE.Modeling.IO;

namespace CMoE.Modeling.Families;

/// <summary>
/// Qwen3: LLaMA plus an RMSNorm over each query and key head before RoPE (<c>self_attn.q_norm</c>, <c>self_attn.k_norm</c>,
/// weight [head_dim]); <c>head_dim</c> is explicit (it may differ from hidden / heads); no q/k/v bias.
/// </summary>
internal sealed class Qwen3Family : ModelFamily
{
    public override IReadOnlyList<(string Architecture, string ModelType)> Names { get; } = [("Qwen3ForCausalLM", "qwen3")];

    internal override LlamaConfig Read(JsonObject obj, LlamaConfig common, string path)
    {
        if (LlamaConfig.Bool(obj, "use_sliding_window") == true)
            throw new CMoEFormatException($"'{path}': use_sliding_window = true is not supported for {common.Architecture} (its per-layer windows are not implemented). Use a config with use_sliding_window false.");
        return base.Read(obj, common, path) with { QkNorm = true };
    }

    internal override string GgufArchitecture => "qwen3";

    internal override void GgufLayer(GgufTensors t, LlamaConfig c, int i)
    {
        base.GgufLayer(t, c, i);
        t.Norm($"blk.{i}.attn_q_norm.weight", $"model.layers.{i}.self_attn.q_norm.weight", c.HeadDim);
        t.Norm($"blk.{i}.attn_k_norm.weight", $"model.layers.{i}.self_attn.k_norm.weight", c.HeadDim);
    }
}
