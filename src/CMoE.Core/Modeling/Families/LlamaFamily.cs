namespace CMoE.Modeling.Families;

/// <summary>
/// LLaMA and Mistral: the reference layout every other family is described against (SwiGLU, RMSNorm, RoPE, GQA, optional
/// <c>attention_bias</c>). Mistral's <c>sliding_window</c> is not applied (as llama.cpp, which writes Mistral as "llama").
/// </summary>
internal sealed class LlamaFamily : ModelFamily
{
    public override IReadOnlyList<(string Architecture, string ModelType)> Names { get; } =
        [("LlamaForCausalLM", "llama"), ("MistralForCausalLM", "mistral")];

    internal override string GgufArchitecture => "llama";

    /// <summary>llama.cpp's LLaMA graph uses interleaved RoPE pairs, so the converter permutes q/k rows.</summary>
    internal override bool GgufPermutesQk => true;
}
