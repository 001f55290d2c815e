using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CMoE.Modeling;

/// <summary>RMSNorm: y = w * x / sqrt(mean(x^2) + eps), computed in fp32 as Hugging Face does.</summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly double _eps;

    /// <summary>Creates the norm with an uninitialised weight of width <paramref name="size"/>.</summary>
    public RmsNorm(long size, double eps, ScalarType dtype = ScalarType.Float32) : base(nameof(RmsNorm))
    {
        _eps = eps;
        weight = new Parameter(ones(size, dtype: dtype), requires_grad: false);
        RegisterComponents();
    }

    /// <summary>Normalises the last dimension.</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        if (x.dtype == ScalarType.Float32 && weight.dtype == ScalarType.Float32)
        {
            // fp32: no casts; the normalisation's intermediates are updated in place (same values).
            var r = x.square().mean([-1], keepdim: true).add_(_eps).rsqrt_();             // [..., 1]
            var y = x * r;                                                              // [..., d]
            return (weight.requires_grad && is_grad_enabled() ? weight * y : y.mul_(weight)).MoveToOuterDisposeScope();
        }
        var x32 = x.to(ScalarType.Float32);                                       // [..., d]
        var variance = x32.pow(2).mean([-1], keepdim: true);                       // [..., 1]
        var normed = (x32 * rsqrt(variance + _eps)).to(x.dtype);                    // [..., d]
        return (weight * normed).MoveToOuterDisposeScope();
    }
}
