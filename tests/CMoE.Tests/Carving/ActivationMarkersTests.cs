using CMoE.Modeling;
using CMoE.Carving;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Tests.Carving;

public class ActivationMarkersTests
{
    public ActivationMarkersTests() => torch.set_num_threads(1);

    [Theory]
    [InlineData(ActivationScore.Cosine)]
    [InlineData(ActivationScore.Raw)]
    public void MarkersHoldExactlyKOnesPerRow(ActivationScore kind)
    {
        using var scope = NewDisposeScope();
        using var gen = new torch.Generator(11);
        var x = randn(new long[] { 2500, 16 }, generator: gen);   // spans three chunks
        var wGate = randn(new long[] { 40, 16 }, generator: gen);
        var wUp = randn(new long[] { 40, 16 }, generator: gen);

        var markers = ActivationMarkers.Markers(ActivationMarkers.Scores(x, wGate, wUp, kind), 5);

        markers.shape.Should().Equal(2500, 40);
        markers.dtype.Should().Be(ScalarType.Float32);
        markers.sum(1).eq(Scalars.Of(5L)).all().item<bool>().Should().BeTrue();
        markers.eq(Scalars.Of(0L)).logical_or(markers.eq(Scalars.Of(1L))).all().item<bool>().Should().BeTrue();
        ActivationMarkers.Rates(markers).sum().item<float>().Should().BeApproximately(5f, 1e-4f);
    }

    [Fact]
    public void MarkersAreTheTopKMagnitudes()
    {
        using var scope = NewDisposeScope();
        var scores = tensor(new float[] { 0.1f, -5f, 2f, 0.3f, 3f, -0.2f, 0f, -1f }).reshape(2, 4);
        var markers = ActivationMarkers.Markers(scores, 2);
        markers.data<float>().ToArray().Should().Equal(0, 1, 1, 0, 1, 0, 0, 1);
    }

    [Fact]
    public void FusedMarkersEqualScoresThenMarkers()
    {
        using var scope = NewDisposeScope();
        using var gen = new torch.Generator(3);
        var x = randn(new long[] { 1500, 8 }, generator: gen);
        var wGate = randn(new long[] { 30, 8 }, generator: gen);
        var wUp = randn(new long[] { 30, 8 }, generator: gen);
        foreach (var kind in new[] { ActivationScore.Cosine, ActivationScore.Raw })
        {
            var twoStep = ActivationMarkers.Markers(ActivationMarkers.Scores(x, wGate, wUp, kind), 4);
            var fused = ActivationMarkers.Markers(x, wGate, wUp, 4, kind);
            fused.eq(twoStep).all().item<bool>().Should().BeTrue();
        }
    }

    [Fact]
    public void CosineIgnoresWeightAndInputNormsButRawDoesNot()
    {
        using var scope = NewDisposeScope();
        // Neuron 0: large weights at 45 degrees to x; neuron 1: unit weights aligned with x.
        var wGate = tensor(new float[] { 10, 10, 1, 0 }).reshape(2, 2);
        var wUp = tensor(new float[] { 10, 10, 1, 0 }).reshape(2, 2);
        var x = tensor(new float[] { 1, 0, 3, 0 }).reshape(2, 2);

        var raw = ActivationMarkers.Scores(x, wGate, wUp, ActivationScore.Raw).data<float>().ToArray();
        var cosine = ActivationMarkers.Scores(x, wGate, wUp).data<float>().ToArray();

        float Silu(double v) => (float)(v / (1 + Math.Exp(-v)));
        double c = Math.Sqrt(0.5);
        raw.Should().BeEquivalentTo(new[] { Silu(10) * 10, Silu(1), Silu(30) * 30, Silu(3) * 3 },
            o => o.WithStrictOrdering().Using<float>(a => a.Subject.Should().BeApproximately(a.Expectation, 1e-3f)).WhenTypeIs<float>());
        cosine.Should().BeEquivalentTo(new[] { Silu(c) * (float)c, Silu(1), Silu(c) * (float)c, Silu(1) },
            o => o.WithStrictOrdering().Using<float>(a => a.Subject.Should().BeApproximately(a.Expectation, 1e-5f)).WhenTypeIs<float>());

        // With one marker per token the two forms disagree: raw picks the big neuron, cosine the aligned one.
        ActivationMarkers.Markers(x, wGate, wUp, 1, ActivationScore.Raw).data<float>().ToArray().Should().Equal(1, 0, 1, 0);
        ActivationMarkers.Markers(x, wGate, wUp, 1).data<float>().ToArray().Should().Equal(0, 1, 0, 1);
    }

    [Fact]
    public void InputsAreNotDisposedAndKeepTheirType()
    {
        using var gen = new torch.Generator(5);
        var x = randn(new long[] { 4, 3 }, generator: gen);
        var wGate = randn(new long[] { 5, 3 }, generator: gen);
        var wUp = randn(new long[] { 5, 3 }, generator: gen);
        using (var scope = NewDisposeScope())
        {
            ActivationMarkers.Scores(x, wGate, wUp);
            ActivationMarkers.Markers(x, wGate, wUp, 2);
        }
        x.IsInvalid.Should().BeFalse();
        wGate.IsInvalid.Should().BeFalse();
        wUp.IsInvalid.Should().BeFalse();
        x.data<float>().ToArray().Should().HaveCount(12, "the input is still readable");
        x.Dispose(); wGate.Dispose(); wUp.Dispose();
    }

    [Fact]
    public void AcceptsHalfPrecisionInputs()
    {
        using var gen = new torch.Generator(5);
        using var scope = NewDisposeScope();
        var x = randn(new long[] { 6, 4 }, generator: gen).to_type(ScalarType.BFloat16);
        var w = randn(new long[] { 8, 4 }, generator: gen).to_type(ScalarType.BFloat16);
        var markers = ActivationMarkers.Markers(x, w, w, 3);
        markers.dtype.Should().Be(ScalarType.Float32);
        markers.sum(1).eq(Scalars.Of(3L)).all().item<bool>().Should().BeTrue();
    }

    [Fact]
    public void BadShapesAndKFailWithAHint()
    {
        using var gen = new torch.Generator(5);
        using var scope = NewDisposeScope();
        var x = randn(new long[] { 4, 3 }, generator: gen);
        var w = randn(new long[] { 5, 3 }, generator: gen);
        var transposed = randn(new long[] { 3, 5 }, generator: gen);
        ((Action)(() => ActivationMarkers.Scores(x, transposed, transposed))).Should().Throw<ArgumentException>()
            .Where(e => e.Message.Contains("not transposed"));
        ((Action)(() => ActivationMarkers.Markers(x, w, w, 6))).Should().Throw<ArgumentOutOfRangeException>()
            .Where(e => e.Message.Contains("between 1 and the number of neurons (5)"));
        ((Action)(() => ActivationMarkers.Scores(x.reshape(2, 2, 3), w, w))).Should().Throw<ArgumentException>()
            .Where(e => e.Message.Contains("Flatten"));
    }
}
