using static TorchSharp.torch;

namespace CMoE.Modeling.Weights;

/// <summary>
/// What a model computes in (its activations, norms, router, KV cache) and how it stores its weight matrices. Two
/// combinations exist: fp32 activations over fp32, bf16 or int8 weights (inference: <c>--weights</c>), and bf16
/// everywhere (fine-tuning on a GPU: <c>cmoe finetune --dtype bf16</c>).
/// </summary>
/// <param name="Compute">The activation dtype: fp32, or bf16 with bf16 weights.</param>
/// <param name="Weights">The weight storage format.</param>
public sealed record Precision(ScalarType Compute, WeightFormat Weights)
{
    /// <summary>fp32 activations and weights (the default; what carving and fp32 training use).</summary>
    public static readonly Precision Fp32 = new(ScalarType.Float32, WeightFormat.Fp32);

    /// <summary>Everything in <paramref name="dtype"/> (fp32, or bf16 for GPU training).</summary>
    /// <exception cref="ArgumentException">Another dtype.</exception>
    public static Precision Of(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => Fp32,
        ScalarType.BFloat16 => new(ScalarType.BFloat16, WeightFormat.Bf16),
        _ => throw new ArgumentException($"Models compute in fp32 or bf16, not {dtype}."),
    };

    /// <summary>fp32 activations over weights stored in <paramref name="weights"/> (inference).</summary>
    public static Precision Inference(WeightFormat weights) => new(ScalarType.Float32, weights);

    /// <summary>Fails with a message naming the fix on a combination the modules do not implement.</summary>
    public void Validate()
    {
        if (Compute == ScalarType.Float32) return;
        if (Compute == ScalarType.BFloat16 && Weights.Kind == WeightKind.Bf16) return;
        throw new ArgumentException($"Computing in {Compute} over {Weights} weights is not supported: use fp32 activations (any weight format) or bf16 for both.");
    }
}
