using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;

namespace CMoE.Modeling;

/// <summary>RMSNorm: y = w * x / sqrt(mean(x^2) + eps), computed in fp32 as Hugging Face does.</summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly double _eps;
    private readonly Scalar _epsScalar;   // long-lived (see Scalars)

    /// <summary>Creates the norm with an uninitialised weight of width <paramref name="size"/>.</summary>
    public RmsNorm(long size, double eps, ScalarType dtype = ScalarType.Float32) : base(nameof(RmsNorm))
    {
        _eps = eps;
        _epsScalar = Scalars.Of(eps);
        weight = new Parameter(ones(size, dtype: dtype), requires_grad: false);
        RegisterComponents();
    }

    /// <summary>Normalises the last dimension.</summary>
    public override Tensor forward(Tensor x)
    {
        if (TryManagedForward(x) is { } decoded) return decoded;
        using var scope = NewDisposeScope();
        if (x.dtype == ScalarType.Float32 && weight.dtype == ScalarType.Float32)
        {
            // fp32: no casts; the normalisation's intermediates are updated in place (same values).
            var r = x.pow(Scalars.Of(2.0)).mean([-1], keepdim: true).add_(_epsScalar, Scalars.One).rsqrt_();             // [..., 1]
            var y = x * r;                                                              // [..., d]
            return (weight.requires_grad && is_grad_enabled() ? weight * y : y.mul_(weight)).MoveToOuterDisposeScope();
        }
        var x32 = x.to(ScalarType.Float32);                                       // [..., d]
        var variance = x32.pow(Scalars.Of(2.0)).mean([-1], keepdim: true);                       // [..., 1]
        var normed = (x32 * rsqrt(variance.add(_epsScalar, Scalars.One))).to(x.dtype);                    // [..., d]
        return (weight * normed).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Decode path (CPU fp32, at most <see cref="DecodeKernels.MaxTokens"/> rows, no gradient): the same fp32 formula in
    /// managed code into a fresh tensor, one allocation instead of five tensor operations; null where it does not apply.
    /// </summary>
    private Tensor? TryManagedForward(Tensor x)
    {
        long d = weight.shape[0];
        if (!Decodable || !DecodeKernels.Qualifies(x, d, DecodeKernels.MaxTokens)) return null;
        var y = empty(x.shape, dtype: ScalarType.Float32);
        Decode(DecodeKernels.Floats(x), DecodeKernels.Floats(y));
        return y;
    }

    /// <summary>Whether <see cref="Decode"/> may read the weight (fp32, CPU, no gradient wanted).</summary>
    internal bool Decodable => !(weight.requires_grad && is_grad_enabled()) && DecodeKernels.Readable(weight);

    /// <summary>y = RMSNorm(x) for each row of <paramref name="xs"/> [n * d] into <paramref name="ys"/> (in fp32, as the tensor path).</summary>
    internal void Decode(ReadOnlySpan<float> xs, Span<float> ys)
    {
        long d = weight.shape[0];
        ReadOnlySpan<float> w = DecodeKernels.Floats(weight);
        for (int t = 0; t < xs.Length / d; t++)
        {
            var row = xs.Slice(t * (int)d, (int)d);
            var output = ys.Slice(t * (int)d, (int)d);
            float r = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(row) / d + (float)_eps);   // 1 / sqrt(mean(x^2) + eps)
            TensorPrimitives.Multiply(row, r, output);
            TensorPrimitives.Multiply(output, w, output);
        }
    }
}
