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
        var x32 = x.to(ScalarType.Float32);                                       // [..., d]
        var variance = x32.pow(2).mean([-1], keepdim: true);                       // [..., 1]
        var normed = (x32 * rsqrt(variance + _eps)).to(x.dtype);                    // [..., d]
        return (weight * normed).MoveToOuterDisposeScope();
    }
}
