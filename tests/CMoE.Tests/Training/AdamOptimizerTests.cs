using CMoE.Modeling;
using CMoE.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CMoE.Tests.Training;

/// <summary>
/// Our Adam/AdamW (which keeps its scalars alive through the native calls) makes the same updates as TorchSharp's own
/// optimisers, which it replaces in the fine-tuner: two groups with their own learning rates, a schedule that changes
/// them per step, weight decay, a parameter without a gradient.
/// </summary>
public class AdamOptimizerTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void MatchesTorchSharpsOptimiser(bool decoupled)
    {
        TorchTestSetup.Pin();
        var gen = new Generator(3);
        Parameter[] Make() =>
        [
            new(randn(new long[] { 5, 4 }, generator: new Generator(7)), requires_grad: true),
            new(randn(new long[] { 3 }, generator: new Generator(8)), requires_grad: true),
            new(randn(new long[] { 2 }, generator: new Generator(9)), requires_grad: true),   // never gets a gradient
        ];
        var ours = Make();
        var theirs = Make();
        using var mine = new AdamOptimizer([new([ours[0], ours[2]], 1e-2, 0.1), new([ours[1]], 3e-3, 0)], 0.9, 0.95, decoupled: decoupled);
#pragma warning disable RS0030 // the reference: TorchSharp's own optimisers (they make temporary scalars; single-threaded here)
        using optim.Optimizer reference = decoupled
            ? optim.AdamW([new AdamW.ParamGroup([theirs[0], theirs[2]], lr: 1e-2, beta1: 0.9, beta2: 0.95, weight_decay: 0.1),
                new AdamW.ParamGroup([theirs[1]], lr: 3e-3, beta1: 0.9, beta2: 0.95, weight_decay: 0)], 1e-2, 0.9, 0.95)
            : optim.Adam([new Adam.ParamGroup([theirs[0], theirs[2]], lr: 1e-2, beta1: 0.9, beta2: 0.95, weight_decay: 0.1),
                new Adam.ParamGroup([theirs[1]], lr: 3e-3, beta1: 0.9, beta2: 0.95, weight_decay: 0)], 1e-2, 0.9, 0.95);
        var groups = reference.ParamGroups.ToList();
        for (int step = 0; step < 6; step++)
        {
            double factor = 1.0 - step / 8.0;                                   // a decaying schedule
            mine.Groups[0].LearningRate = 1e-2 * factor;
            mine.Groups[1].LearningRate = 3e-3 * factor;
            groups[0].LearningRate = 1e-2 * factor;
            groups[1].LearningRate = 3e-3 * factor;
            using var target = randn(new long[] { 5, 4 }, generator: gen);
            foreach (var (p, opt) in new[] { (ours, (Action)mine.Step), (theirs, () => reference.step()) })
            {
                using var scope = NewDisposeScope();
                var loss = p[0].sub(target).pow(Scalars.Of(2.0)).sum().add(p[1].sin().sum(), Scalars.One);
                loss.backward();
                opt();
            }
            mine.ZeroGrad();
            reference.zero_grad();
        }
#pragma warning restore RS0030
        for (int i = 0; i < 3; i++)
            (ours[i] - theirs[i]).abs().max().item<float>().Should().BeLessThan(1e-7f, $"parameter {i}");
        using (var untouched = randn(new long[] { 2 }, generator: new Generator(9)))
            ours[2].allclose(untouched, 0, 0).Should().BeTrue("a parameter without a gradient is left alone, weight decay included");
    }
}
