using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Modeling;

/// <summary>The activation of a gated FFN y = W_down (act(W_gate x) * (W_up x)): the one place each is computed as tensors.</summary>
public enum GatedActivation
{
    /// <summary>SiLU (SwiGLU: LLaMA, Mistral, Qwen, Phi-3).</summary>
    Silu,
    /// <summary>GELU, tanh approximation (GeGLU with <c>gelu_pytorch_tanh</c>: Gemma-2).</summary>
    GeluTanh,
}

/// <summary>Applying a <see cref="GatedActivation"/>.</summary>
public static class GatedActivations
{
    /// <summary>The config.json name (<c>hidden_act</c>).</summary>
    public static string ConfigName(this GatedActivation a) => a == GatedActivation.Silu ? "silu" : "gelu_pytorch_tanh";

    /// <summary>act(x) as a new tensor.</summary>
    public static Tensor Apply(this GatedActivation a, Tensor x) =>
        a == GatedActivation.Silu ? F.silu(x) : F.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh);

    /// <summary>act(x) in place where the activation allows it (returns the result: x itself for SiLU).</summary>
    public static Tensor ApplyInPlace(this GatedActivation a, Tensor x) =>
        a == GatedActivation.Silu ? x.silu_() : x.copy_(F.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh));
}
