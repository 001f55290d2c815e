using System.Text.Json.Nodes;

namespace CMoE.Modeling.Families;

/// <summary>Qwen2: LLaMA with biases on q, k and v (none on the output projection).</summary>
internal sealed class Qwen2Family : ModelFamily
{
    public override IReadOnlyList<(string Architecture, string ModelType)> Names { get; } = [("Qwen2ForCausalLM", "qwen2")];

    internal override LlamaConfig Read(JsonObject obj, LlamaConfig common, string path)
    {
        if (LlamaConfig.Bool(obj, "use_sliding_window") == true)
            throw new CMoEFormatException($"'{path}': use_sliding_window = true is not supported for {common.Architecture} (its per-layer windows are not implemented). Use a config with use_sliding_window false.");
        return base.Read(obj, common, path) with { QkvBias = true, OutputBias = false };
    }

    internal override void Write(JsonObject json, LlamaConfig c)
    {
    }

    internal override string GgufArchitecture => "qwen2";
}
