using CMoE.Modeling.Weights;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Modeling.Kernels;

/// <summary>
/// y = x W^T (+ b) for a <see cref="StoredWeight"/> in any format, on the tensor paths (prefill, training, other devices):
/// weights in the activations' dtype go straight to libtorch (differentiable); int8 weights with fp32 activations on the CPU
/// and a few tokens take the managed int8 kernels (<see cref="MatVec"/>); everything else (prefill, other dtypes) is converted
/// or dequantized to the activations' dtype first, one matrix at a time, then libtorch's GEMM: measured on tinyref, that
/// prefills 1.5-2.7x faster than an int8 VNNI GEMM with 3x3 register tiles did (docs/benchmarks.md, "Weight formats").
/// </summary>
internal static class WeightKernels
{
    /// <summary>Token counts up to this take one managed matrix-vector product per token; more are dequantized into a GEMM.</summary>
    private const int MatVecTokens = 4;

    /// <summary>
    /// The same for a matrix of more than <see cref="LargeMatrixBytes"/>: dequantizing a matrix that does not stay in cache costs
    /// more than the GEMM (a fresh fp32 copy per call); `cmoe bench` on the Llama-2-7B shape in int8 prefilled a 16-token
    /// prompt at 0.52 tokens/s before and 3.31 after (docs/benchmarks.md, "Llama-2-7B shape").
    /// </summary>
    internal const int LargeMatrixMatVecTokens = 16;

    /// <summary>Matrix bytes above which <see cref="LargeMatrixMatVecTokens"/> applies.</summary>
    internal const long LargeMatrixBytes = 4L << 20;

    /// <summary>How many tokens <paramref name="w"/> takes through the matrix-vector kernels.</summary>
    internal static int MatVecLimit(in MatrixView w) => w.Bytes > LargeMatrixBytes ? LargeMatrixMatVecTokens : MatVecTokens;

    /// <summary>x [..., in] -> [..., out].</summary>
    public static Tensor Linear(Tensor x, StoredWeight w, Tensor? bias)
    {
        if (w.Scales is null && w.Values.dtype == x.dtype) return F.linear(x, w.Values, bias);
        bool grad = x.requires_grad && is_grad_enabled();
        if (grad && w.Format.Kind == WeightKind.Int8)
            throw new InvalidOperationException("int8 weights are for inference; fine-tune a model loaded with fp32 or bf16 weights.");
        if (!grad && w.Format.Kind == WeightKind.Int8 && ManagedInt8(x, w, bias) is { } y) return y;
        using var dense = w.Dense(x.dtype);
        return F.linear(x, dense, bias);
    }

    /// <summary>int8 weights, fp32 activations on the CPU: the managed kernels into a fresh tensor; null where they do not apply.</summary>
    private static Tensor? ManagedInt8(Tensor x, StoredWeight w, Tensor? bias)
    {
        if (x.dtype != ScalarType.Float32 || x.device_type != TorchSharp.DeviceType.CPU || MatrixView.Of(w) is not { } view) return null;
        if (bias is not null && (bias.dtype != ScalarType.Float32 || bias.device_type != TorchSharp.DeviceType.CPU)) return null;
        using var scope = NewDisposeScope();
        var input = x.contiguous();
        long tokens = input.numel() / view.Cols;
        if (tokens == 0 || tokens > MatVecLimit(view)) return null;   // prefill: dequantized into libtorch's GEMM (faster here than an int8 GEMM: docs/benchmarks.md)
        long[] shape = x.shape;
        shape[^1] = view.Rows;
        var y = empty(shape, dtype: ScalarType.Float32);
        var xs = DecodeKernels.Floats(input);
        var ys = DecodeKernels.Floats(y);
        for (int t = 0; t < tokens; t++) MatVec.Run(view, xs.Slice(t * view.Cols, view.Cols), ys.Slice(t * view.Rows, view.Rows));
        if (bias is not null) y.add_(bias, Scalars.One);
        return y.MoveToOuterDisposeScope();
    }
}
