using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;

namespace CMoE.Modeling;

/// <summary>
/// RMSNorm: y = w * x / sqrt(mean(x^2) + eps), computed in fp32 as Hugging Face does; with a weight offset of 1
/// (Gemma) y = (1 + w) * x / sqrt(mean(x^2) + eps), the stored weight staying Hugging Face's w.
/// </summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly double _eps;
    private readonly Scalar _epsScalar;   // long-lived (see Scalars)
    private readonly double _offset;

    /// <summary>Creates the norm with an uninitialised weight of width <paramref name="size"/>; <paramref name="weightOffset"/> 1 scales by (1 + w).</summary>
    public RmsNorm(long size, double eps, ScalarType dtype = ScalarType.Float32, double weightOffset = 0) : base(nameof(RmsNorm))
    {
        _eps = eps;
        _offset = weightOffset;
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
            var w = Scale();                                                            // [d]
            return (weight.requires_grad && is_grad_enabled() ? w * y : y.mul_(w)).MoveToOuterDisposeScope();
        }
        var x32 = x.to(ScalarType.Float32);                                       // [..., d]
        var variance = x32.pow(Scalars.Of(2.0)).mean([-1], keepdim: true);                       // [..., 1]
        if (_offset != 0)   // Gemma: (x32 * r) * (1 + w.float()), then cast back
            return (x32 * rsqrt(variance.add(_epsScalar, Scalars.One)) * Scale().to(ScalarType.Float32)).to(x.dtype).MoveToOuterDisposeScope();
        var normed = (x32 * rsqrt(variance.add(_epsScalar, Scalars.One))).to(x.dtype);                    // [..., d]
        return (weight * normed).MoveToOuterDisposeScope();
    }

    /// <summary>The effective scale: w, or offset + w.</summary>
    private Tensor Scale() => _offset == 0 ? weight : weight.add(Scalars.Of(_offset), Scalars.One);

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
        float[]? shifted = null;
        if (_offset != 0)
        {
            shifted = new float[d];
            TensorPrimitives.Add(w, (float)_offset, shifted);                                   // 1 + w, rounded to fp32 as the tensor path
            w = shifted;
        }
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
