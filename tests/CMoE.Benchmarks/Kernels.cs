using CMoE.Carving;
using CMoE.Modeling;
using CMoE.Modeling.MoE;
using static TorchSharp.torch;

namespace CMoE.Benchmarks;

/// <summary>Builds random dense FFNs and carved twins for the benchmarks.</summary>
public static class Kernels
{
    /// <summary>A random dense SwiGLU FFN and a MoE carved from it with a random partition (eval mode).</summary>
    public static (SwiGluMlp Dense, MoeBlock Moe) Build(int hidden, int intermediate, MoeLayout layout, int seed)
    {
        using var noGrad = no_grad();
        using var gen = new TorchSharp.torch.Generator((ulong)seed);
        var dense = new SwiGluMlp(hidden, intermediate);
        dense.Gate.Weight.normal_(0, 0.02, gen);
        dense.Up.Weight.normal_(0, 0.02, gen);
        dense.Down.Weight.normal_(0, 0.02, gen);
        int m = layout.ExpertSize(intermediate), shared = layout.SharedSize(intermediate);
        var rng = new Random(seed);
        var perm = Enumerable.Range(0, intermediate).OrderBy(_ => rng.Next()).ToArray();
        var experts = Enumerable.Range(0, layout.Routed).Select(j => perm.Skip(shared + j * m).Take(m).ToArray()).ToArray();
        var moe = MoeBlock.FromDense(dense, perm.Take(shared).ToArray(), experts, experts.Select(e => e[0]).ToArray(), layout.Active);
        dense.eval();
        moe.eval();
        return (dense, moe);
    }
}
