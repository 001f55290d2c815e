using CMoE.Modeling;
using CMoE.Modeling.MoE;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Tests.Modeling;

public class MoeBlockTests
{
    private static SwiGluMlp RandomDense(int d, int dh, int seed)
    {
        torch.manual_seed(seed);
        var dense = new SwiGluMlp(d, dh);
        using var noGrad = no_grad();
        dense.Gate.Weight.copy_(randn(dh, d) * 0.1);
        dense.Up.Weight.copy_(randn(dh, d) * 0.1);
        dense.Down.Weight.copy_(randn(d, dh) * 0.1);
        return dense;
    }

    private static (int[] Shared, int[][] Experts, int[] Reps) RandomPartition(int dh, int shared, int e, int seed)
    {
        var rng = new Random(seed);
        var perm = Enumerable.Range(0, dh).OrderBy(_ => rng.Next()).ToArray();
        int m = (dh - shared) / e;
        var experts = Enumerable.Range(0, e).Select(j => perm.Skip(shared + j * m).Take(m).ToArray()).ToArray();
        return (perm.Take(shared).ToArray(), experts, experts.Select(x => x[0]).ToArray());
    }

    [Fact]
    public void EveryExpertOnEqualsDense()
    {
        TorchTestSetup.Pin();
        using var dense = RandomDense(32, 96, seed: 1);
        var (shared, experts, reps) = RandomPartition(96, shared: 12, e: 7, seed: 2);
        using var moe = MoeBlock.FromDense(dense, shared, experts, reps, active: 2);
        moe.ActiveExperts = 7;
        using var x = randn(3, 5, 32);
        using var expected = dense.forward(x);
        using var actual = moe.forward(x);
        actual.shape.Should().Equal(expected.shape);
        (actual - expected).abs().max().item<float>().Should().BeLessThan(1e-5f);
    }

    [Fact]
    public void SparseOutputEqualsPerTokenReference()
    {
        TorchTestSetup.Pin();
        using var dense = RandomDense(16, 64, seed: 3);
        var (shared, experts, reps) = RandomPartition(64, shared: 16, e: 6, seed: 4);
        using var moe = MoeBlock.FromDense(dense, shared, experts, reps, active: 2);
        using (no_grad()) moe.Router.Scale.copy_(randn(6));      // non-trivial gates
        using var x = randn(9, 16);
        using var actual = moe.forward(x);

        // Reference: one token at a time, experts looped explicitly.
        var (sel, gates, _) = moe.Router.Route(x, 2);
        for (int t = 0; t < 9; t++)
        {
            var xt = x[t].unsqueeze(0);
            var y = moe.SharedExpert!.forward(xt);
            for (int k = 0; k < 2; k++)
                y = y + gates[t, k].item<float>() * moe.Experts.Expert(sel[t, k].item<long>(), xt);
            (actual[t] - y[0]).abs().max().item<float>().Should().BeLessThan(1e-5f);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(16)]
    public void FastDecodePathEqualsGroupedPath(int tokens)
    {
        TorchTestSetup.Pin();
        using var dense = RandomDense(24, 96, seed: 5);
        var (shared, experts, reps) = RandomPartition(96, shared: 12, e: 7, seed: 6);
        using var moe = MoeBlock.FromDense(dense, shared, experts, reps, active: 3);
        using (no_grad()) moe.Router.Scale.copy_(randn(7));      // non-trivial gates
        moe.eval();
        using var x = randn(tokens, 24);
        using var grouped = moe.GroupedForward(x, 3);
        using var fast = moe.FastForward(x, 3);
        (fast - grouped).abs().max().item<float>().Should().BeLessThan(1e-5f);

        // forward() picks the fast path in eval mode for few tokens, the grouped one otherwise.
        moe.FastPathMaxTokens = tokens;
        using var viaForward = moe.forward(x.view(1, tokens, 24));
        (viaForward.view(tokens, 24) - grouped).abs().max().item<float>().Should().BeLessThan(1e-5f);
        moe.train();
        using var training = moe.forward(x);
        (training - grouped).abs().max().item<float>().Should().BeLessThan(1e-5f);
    }

    [Fact]
    public void FastPathWithoutSharedExpertAndAllExpertsOnEqualsDense()
    {
        TorchTestSetup.Pin();
        using var dense = RandomDense(16, 64, seed: 7);
        var (shared, experts, reps) = RandomPartition(64, shared: 0, e: 4, seed: 8);
        using var moe = MoeBlock.FromDense(dense, shared, experts, reps, active: 4);
        moe.eval();
        using var x = randn(1, 1, 16);
        using var expected = dense.forward(x);
        using var actual = moe.forward(x);
        (actual - expected).abs().max().item<float>().Should().BeLessThan(1e-5f);
    }

    [Fact]
    public void StateDictUsesTheDocumentedKeys()
    {
        using var moe = new MoeBlock(new MoeShape(8, 4, 3, 4, 1));
        moe.state_dict().Keys.Should().BeEquivalentTo(
            "shared_expert.gate_proj.weight", "shared_expert.up_proj.weight", "shared_expert.down_proj.weight",
            "experts.gate_proj", "experts.up_proj", "experts.down_proj",
            "router.gate", "router.up", "router.scale", "router.bias",
            "shared_neurons", "expert_neurons", "representatives");
    }
}
