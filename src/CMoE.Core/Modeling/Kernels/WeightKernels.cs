using CMoE.Modeling.Weights;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Modeling.Kernels;

/// <summary>
/// y = x W^T (+ b) for a <see cref="StoredWeight"/> in any format, on the tensor paths (prefill, training, other devices):
/// weights in the activations' dtype go straight to libtorch (differentiable); low-bit weights are converted or
/// dequantized to the activations' dtype first.
/// </summary>
internal static class WeightKernels
{
    /// <summary>x [..., in] -> [..., out].</summary>
    public static Tensor Linear(Tensor x, StoredWeight w, Tensor? bias)
    {
        if (w.Scales is null && w.Values.dtype == x.dtype) return F.linear(x, w.Values, bias);
        if (x.requires_grad && is_grad_enabled() && w.Format.Kind == WeightKind.Int8)
            throw new InvalidOperationException("int8 weights are for inference; fine-tune a model loaded with fp32 or bf16 weights.");
        using var dense = w.Dense(x.dtype);
        return F.linear(x, dense, bias);
    }
}
