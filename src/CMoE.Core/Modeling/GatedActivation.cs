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
    public static Tensor Apply(this GatedActivation a, Tensor x) => a == GatedActivation.Silu ? F.silu(x) : GeluTanh(x);

    /// <summary>act(x) in place where the activation allows it (returns the result: x itself for SiLU).</summary>
    public static Tensor ApplyInPlace(this GatedActivation a, Tensor x)
    {
        if (a == GatedActivation.Silu) return x.silu_();
        using var y = GeluTanh(x);
        return x.copy_(y);
    }

    /// <summary>
    /// For the llama.cpp oracle only (tests/CMoE.Peer): compute tanh-GELU as llama.cpp's CPU backend does, through its
    /// half-precision table, y = fp16(gelu(fp16(x))) for -10 &lt; x &lt; 10, 0 below, x above. That table moves a Gemma-2
    /// perplexity by 1e-6..2e-5 relative; with it on, the remaining difference is everything else. Per thread (the thread that
    /// runs the tensor forward pass); off by default.
    /// </summary>
    internal static bool EmulateLlamaCppGelu { get => _emulate; set => _emulate = value; }

    [ThreadStatic] private static bool _emulate;

    private static Tensor GeluTanh(Tensor x)
    {
        if (!EmulateLlamaCppGelu) return F.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh);
        using var scope = NewDisposeScope();
        var table = F.gelu(x.to(ScalarType.Float16).to(x.dtype), TorchSharp.Modules.GELU.Approximate.tanh).to(ScalarType.Float16).to(x.dtype);
        var y = where(x.le(Scalars.Of(-10.0)), zeros_like(x), where(x.ge(Scalars.Of(10.0)), x, table));
        return y.MoveToOuterDisposeScope();
    }
}
