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
        dense.Gate.Weight.copy_(randn(dh, d).mul(Scalars.Of(0.1)));
        dense.Up.Weight.copy_(randn(dh, d).mul(Scalars.Of(0.1)));
        dense.Down.Weight.copy_(randn(d, dh).mul(Scalars.Of(0.1)));
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
                y = y.add(moe.Experts.Expert(sel[t, k].item<long>(), xt), Scalars.Of((double)gates[t, k].item<float>()));
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

    [Theory]
    [InlineData(12, 1)]
    [InlineData(12, 4)]
    [InlineData(0, 2)]
    public void ManagedDecodeEqualsGroupedPath(int sharedNeurons, int tokens)
    {
        TorchTestSetup.Pin();
        using var dense = RandomDense(40, 124, seed: 9);
        var (shared, experts, reps) = RandomPartition(124, shared: sharedNeurons, e: 7, seed: 10);
        using var moe = MoeBlock.FromDense(dense, shared, experts, reps, active: 3);
        using (no_grad())
        {
            moe.Router.Scale.copy_(randn(7));                  // non-trivial gates
            moe.Router.Scale[2] = tensor(0f);                  // and one gate of exactly 1 + 0
            moe.Router.Bias.copy_(randn(7).mul(Scalars.Of(0.1)));             // the bias changes the selection
        }
        moe.eval();
        using var x = randn(1, tokens, 40);
        using var managed = moe.TryManagedForward(x);
        managed.Should().NotBeNull("CPU fp32 inference on few tokens takes the managed decode path");
        managed!.shape.Should().Equal(x.shape);
        using var grouped = moe.GroupedForward(x.view(tokens, 40), 3);
        (managed.view(tokens, 40) - grouped).abs().max().item<float>().Should().BeLessThan(1e-5f);

        // In-place weight updates (loading, LoRA merge) are seen at once.
        using (no_grad()) moe.Experts.Down.mul_(Scalars.Of(2.0));
        using var regrouped = moe.GroupedForward(x.view(tokens, 40), 3);
        using var remanaged = moe.forward(x);
        (remanaged.view(tokens, 40) - regrouped).abs().max().item<float>().Should().BeLessThan(1e-5f);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(4)]
    public void DenseManagedDecodeEqualsTensorPath(int tokens)
    {
        TorchTestSetup.Pin();
        using var dense = RandomDense(40, 124, seed: 13);
        dense.eval();                                              // new modules start in training mode
        using var x = randn(1, tokens, 40);
        using var managed = dense.TryManagedForward(x);
        managed.Should().NotBeNull("CPU fp32 inference on few tokens takes the managed decode path");
        dense.train();                                             // training mode: the tensor reference path
        dense.TryManagedForward(x).Should().BeNull();
        using var reference = dense.forward(x);
        (managed! - reference).abs().max().item<float>().Should().BeLessThan(1e-5f);
    }

    [Fact]
    public void ManagedDecodeStepsAsideWhereItDoesNotApply()
    {
        TorchTestSetup.Pin();
        using var dense = RandomDense(16, 64, seed: 11);
        var (shared, experts, reps) = RandomPartition(64, shared: 8, e: 4, seed: 12);
        using var moe = MoeBlock.FromDense(dense, shared, experts, reps, active: 2);
        using var x = randn(1, 1, 16);
        moe.eval();
        using (var many = randn(1, 5, 16)) moe.TryManagedForward(many).Should().BeNull("more tokens than FastPathMaxTokens take the grouped path");
        using (var half = x.to(ScalarType.Float64)) moe.TryManagedForward(half).Should().BeNull("only fp32 inputs qualify");
        moe.train();
        moe.TryManagedForward(x).Should().BeNull("training mode needs the differentiable path");
        moe.eval();
        moe.to(ScalarType.BFloat16);
        using (var bf = x.to(ScalarType.BFloat16))
        {
            moe.TryManagedForward(bf).Should().BeNull("bf16 weights use the tensor paths");
            using var y = moe.forward(bf);                     // and the block still works after the weights were replaced
            y.shape.Should().Equal(bf.shape);
        }
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
