using CMoE.Carving;
using CMoE.Modeling;
using CMoE.Sweeps;

namespace CMoE.Tests.Sweeps;

public class ParetoFrontTests
{
    [Fact]
    public void MarksExactlyTheNonDominatedPoints()
    {
        // (cost, loss): both minimised.
        var points = new List<(double, double)>
        {
            (0.25, 240),   // 0 front: cheapest
            (0.25, 255),   // 1 dominated by 0 (same cost, higher loss)
            (0.50, 120),   // 2 front
            (0.50, 130),   // 3 dominated by 2
            (0.375, 150),  // 4 front
            (0.75, 121),   // 5 dominated by 2 (more cost, more loss)
            (0.75, 90),    // 6 front: best loss
            (0.75, 90),    // 7 exact duplicate of 6: kept
            (0.60, double.NaN), // 8 NaN: never on the front
        };

        ParetoFront.Mark(points).Should().Equal(true, false, true, false, true, false, true, true, false);
    }

    [Fact]
    public void EmptyAndSingleInputs()
    {
        ParetoFront.Mark([]).Should().BeEmpty();
        ParetoFront.Mark([(1.0, 1.0)]).Should().Equal(true);
        ParetoFront.Knee([], []).Should().Be(-1);
    }

    [Fact]
    public void KneeIsTheElbowOfTheFront()
    {
        var points = new List<(double, double)> { (0.1, 100), (0.3, 20), (0.5, 15), (0.9, 10), (0.5, 50) };
        var front = ParetoFront.Mark(points);
        front.Should().Equal(true, true, true, true, false);
        ParetoFront.Knee(points, front).Should().Be(1, "(0.3, 20) bends the front most");
    }

    [Fact]
    public void TrialFrontsUseFractionAndSpeedAndTheMetricDirection()
    {
        SweepTrial Trial(int i, string layout, double metric, double speed)
        {
            var l = MoeLayout.Parse(layout);
            return new SweepTrial(i, new SweepCandidate(l), l.ActiveFraction, 0, metric, speed, 0, 0);
        }
        var trials = new[]
        {
            Trial(0, "S1A1E8", 250, 300),   // 25%: cheapest, fastest
            Trial(1, "S2A2E16", 240, 200),  // 25%: better metric than 0 at the same fraction, slower
            Trial(2, "S3A3E8", 100, 150),   // 75%
            Trial(3, "S2A6E16", 110, 260),  // 50%
            Trial(4, "S6A6E16", 105, 100),  // 75%: dominated by 2 on both fronts
        };

        var lower = SweepResult.MarkPareto(trials, lowerIsBetter: true);
        lower.Select(t => t.ParetoByFraction).Should().Equal(false, true, true, true, false);
        lower.Select(t => t.ParetoBySpeed).Should().Equal(true, false, true, true, false);

        // Higher-is-better metric (e.g. accuracy): the front flips along the metric axis.
        var higher = SweepResult.MarkPareto(trials, lowerIsBetter: false);
        higher.Select(t => t.ParetoByFraction).Should().Equal(true, false, false, false, false);

        var result = new SweepResult("perplexity", true, lower, null, 1, 0, 0, 0, false);
        result.Recommend(0.5)!.Layout.ToString().Should().Be("S2A6E16");
        result.Recommend(0.25)!.Layout.ToString().Should().Be("S2A2E16");
        result.Recommend(0.1).Should().BeNull();
    }

    [Fact]
    public void ActiveParametersCountTheTinyrefModel()
    {
        var config = LlamaConfig.Load(TestPaths.EmbeddedModel);
        ActiveParameters.Dense(config).Should().Be(18_880_896, "the model card gives 18,880,896 parameters");
        // With every expert active the FFN weights are all used; the router adds G, U (2 (e - s) d) and u (e - s).
        ActiveParameters.Carved(config, MoeLayout.Parse("S2A6E8")).Should().Be(18_880_896 + config.NumLayers * (2L * 6 * 384 + 6));
        long ffn = 3L * 384 * 1024;
        ActiveParameters.Carved(config, MoeLayout.Parse("S2A2E16")).Should().Be(
            ActiveParameters.NonFfn(config) + config.NumLayers * (ffn / 4 + 2L * 14 * 384 + 14));
    }

    [Fact]
    public void RandomOrderIsASeededPermutation()
    {
        var space = SweepSpace.Parse("S1A1E8,S2A2E16,S1A3E8,S4A4E16,S3A3E8", [ActivationScore.Cosine, ActivationScore.Raw]);
        var a = space.Order(SearchStrategy.Random, seed: 3);
        var b = space.Order(SearchStrategy.Random, seed: 3);
        a.Should().Equal(b);
        a.Should().BeEquivalentTo(space.Candidates());
        space.Order(SearchStrategy.Grid, 0).Should().Equal(space.Candidates());
        space.Candidates().Should().HaveCount(10);
        SweepSpace.Standard(1024).Layouts.Should().OnlyContain(l => l.ActiveFraction >= 0.125 && l.ActiveFraction <= 0.75 && l.Shared + l.Active <= l.Experts);
    }
}
