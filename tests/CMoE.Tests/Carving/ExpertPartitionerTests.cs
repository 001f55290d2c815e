using CMoE.Modeling;
using CMoE.Carving;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Tests.Carving;

public class ExpertPartitionerTests
{
    public ExpertPartitionerTests() => torch.set_num_threads(1);

    [Fact]
    public void RemainderNeuronsJoinTheSharedExpert()
    {
        using var scope = NewDisposeScope();
        var markers = RandomMarkers(q: 300, dh: 1030, kAct: 10, seed: 1);
        var layout = MoeLayout.Parse("S2A2E16");

        var partition = ExpertPartitioner.Partition(markers, layout);

        partition.Validate(1030);
        partition.Shared.Should().HaveCount(2 * 64 + 6).And.BeInAscendingOrder();
        partition.Routed.Should().HaveCount(14).And.OnlyContain(g => g.Length == 64);
        partition.Representatives.Should().HaveCount(14);
        partition.ActivationRates.Should().HaveCount(1030);
        partition.Rounds.Should().Be(1);
        float lowestShared = partition.Shared.Min(i => partition.ActivationRates[i]);
        float highestRouted = partition.Routed.SelectMany(g => g).Max(i => partition.ActivationRates[i]);
        lowestShared.Should().BeGreaterThanOrEqualTo(highestRouted, "the shared expert holds the most active neurons");
    }

    [Theory]
    [InlineData(32, 0)]
    [InlineData(35, 3)]
    public void WorksWithoutSharedExperts(int dh, int expectedShared)
    {
        using var scope = NewDisposeScope();
        var markers = RandomMarkers(q: 64, dh: dh, kAct: 4, seed: 2);
        var partition = ExpertPartitioner.Partition(markers, MoeLayout.Parse("S0A2E4"), iterations: 3);
        partition.Validate(dh);
        partition.Shared.Should().HaveCount(expectedShared);
        partition.Routed.Should().HaveCount(4).And.OnlyContain(g => g.Length == 8);
    }

    [Fact]
    public void PlantedClustersAreRecoveredWithZeroCost()
    {
        using var scope = NewDisposeScope();
        // Neuron i belongs to cluster i % 4; token t fires exactly the neurons of cluster t % 4.
        const int dh = 24, q = 40;
        var data = new float[q * dh];
        for (int t = 0; t < q; t++)
            for (int i = 0; i < dh; i++)
                data[(t * dh) + i] = i % 4 == t % 4 ? 1 : 0;
        var markers = tensor(data).reshape(q, dh);

        var partition = ExpertPartitioner.Partition(markers, MoeLayout.Parse("S0A1E4"));

        partition.Shared.Should().BeEmpty();
        for (int j = 0; j < 4; j++)
        {
            partition.Routed[j].Should().Equal(Enumerable.Range(0, 6).Select(r => (4 * r) + j));
            partition.Representatives[j].Should().Be(j, "all members tie; the lowest index wins");
        }
        partition.AssignmentCost.Should().Be(0);
    }

    [Fact]
    public void TiedRatesPickLowerIndicesForTheSharedExpert()
    {
        using var scope = NewDisposeScope();
        var markers = zeros(10, 20);
        var partition = ExpertPartitioner.Partition(markers, MoeLayout.Parse("S1A1E4"));
        partition.Shared.Should().Equal(0, 1, 2, 3, 4);
        partition.Validate(20);
        partition.AssignmentCost.Should().Be(0);
    }

    [Fact]
    public void OneRoundCostIsTheL1DistanceToTheSeedColumns()
    {
        using var scope = NewDisposeScope();
        var markers = RandomMarkers(q: 120, dh: 64, kAct: 6, seed: 5);
        var layout = MoeLayout.Parse("S1A2E8");
        var columns = Columns(markers);

        var partition = ExpertPartitioner.Partition(markers, layout);

        // Seeds: the 7 most active non-shared neurons, most active first (lower index on ties).
        var shared = partition.Shared.ToHashSet();
        int[] seeds = Enumerable.Range(0, 64).Where(i => !shared.Contains(i))
            .OrderByDescending(i => partition.ActivationRates[i]).ThenBy(i => i).Take(7).ToArray();
        var centroids = seeds.Select(s => columns[s].Select(v => (double)v).ToArray()).ToArray();
        partition.AssignmentCost.Should().Be(L1Objective(partition.Routed, centroids, columns));
        for (int j = 0; j < 7; j++)
        {
            partition.Routed[j].Should().Contain(seeds[j], "a seed is at distance 0 from its own centroid");
        }
    }

    [Fact]
    public void RepresentativeIsTheMemberClosestToTheGroupMean()
    {
        using var scope = NewDisposeScope();
        var markers = RandomMarkers(q: 200, dh: 96, kAct: 8, seed: 9);
        var columns = Columns(markers);
        var partition = ExpertPartitioner.Partition(markers, MoeLayout.Parse("S2A2E8"), iterations: 2);
        for (int j = 0; j < partition.Routed.Length; j++)
        {
            var mean = Mean(partition.Routed[j], columns);
            int expected = partition.Routed[j].OrderBy(i => L1(columns[i], mean)).ThenBy(i => i).First();
            partition.Representatives[j].Should().Be(expected);
        }
    }

    [Fact]
    public void MoreIterationsStayBalancedAndAreOptimalForTheirFinalCentroids()
    {
        using var scope = NewDisposeScope();
        var markers = RandomMarkers(q: 256, dh: 160, kAct: 12, seed: 13);
        var layout = MoeLayout.Parse("S2A2E10");
        var columns = Columns(markers);

        var first = ExpertPartitioner.Partition(markers, layout, iterations: 1);
        var many = ExpertPartitioner.Partition(markers, layout, iterations: 6);
        many.Validate(160);
        many.Rounds.Should().BeInRange(2, 6);
        many.Shared.Should().Equal(first.Shared);

        // The last round assigned against the means of the previous round's assignment.
        var previous = ExpertPartitioner.Partition(markers, layout, iterations: many.Rounds - 1);
        var finalCentroids = previous.Routed.Select(g => Mean(g, columns)).ToArray();
        double costOfFinal = L1Objective(many.Routed, finalCentroids, columns);
        double costOfFirst = L1Objective(first.Routed, finalCentroids, columns);
        many.AssignmentCost.Should().BeApproximately(costOfFinal, 1e-6);
        many.AssignmentCost.Should().BeLessThanOrEqualTo(costOfFirst + 1e-6);
    }

    [Fact]
    public void PartitionIsDeterministic()
    {
        using var scope = NewDisposeScope();
        var markers = RandomMarkers(q: 128, dh: 120, kAct: 8, seed: 21);
        var layout = MoeLayout.Parse("S1A1E6");
        var a = ExpertPartitioner.Partition(markers, layout, iterations: 3);
        var b = ExpertPartitioner.Partition(markers.clone(), layout, iterations: 3);
        b.Shared.Should().Equal(a.Shared);
        b.Representatives.Should().Equal(a.Representatives);
        b.Routed.Should().BeEquivalentTo(a.Routed, o => o.WithStrictOrdering());
        b.AssignmentCost.Should().Be(a.AssignmentCost);
    }

    [Fact]
    public void PaperSizedRoutedSetCompletes()
    {
        using var scope = NewDisposeScope();
        // n = 1008 routed neurons in k = 14 groups of 72 (S2A2E16 on d_h = 1152).
        var markers = RandomMarkers(q: 512, dh: 1152, kAct: 10, seed: 4);
        var partition = ExpertPartitioner.Partition(markers, MoeLayout.Parse("S2A2E16"));
        partition.Validate(1152);
        partition.Routed.Should().HaveCount(14).And.OnlyContain(g => g.Length == 72);
    }

    [Fact]
    public void BadInputsFailWithAHint()
    {
        using var scope = NewDisposeScope();
        var notBinary = full(4, 8, Scalars.Of(0.5));
        ((Action)(() => ExpertPartitioner.Partition(notBinary, MoeLayout.Parse("S0A1E2"))))
            .Should().Throw<ArgumentException>().Where(e => e.Message.Contains("only 0 and 1"));
        ((Action)(() => ExpertPartitioner.Partition(zeros(4, 8), MoeLayout.Parse("S2A2E16"))))
            .Should().Throw<ArgumentException>().Where(e => e.Message.Contains("at least one neuron"));
        ((Action)(() => ExpertPartitioner.Partition(zeros(4, 8), MoeLayout.Parse("S0A1E2"), iterations: 0)))
            .Should().Throw<ArgumentOutOfRangeException>();
    }

    [Fact]
    public void ValidateCatchesDuplicatesAndGaps()
    {
        var rates = new float[6];
        var duplicate = new ExpertPartition(new[] { 0 }, new[] { new[] { 1, 2 }, new[] { 2, 3 } }, new[] { 1, 2 }, 0, rates, 1);
        ((Action)(() => duplicate.Validate(6))).Should().Throw<InvalidOperationException>()
            .Where(e => e.Message.Contains("neuron 2 appears in more than one expert"));
        var gap = new ExpertPartition(new[] { 0 }, new[] { new[] { 1, 2 }, new[] { 3, 4 } }, new[] { 1, 3 }, 0, rates, 1);
        ((Action)(() => gap.Validate(6))).Should().Throw<InvalidOperationException>()
            .Where(e => e.Message.Contains("neuron 5 belongs to no expert"));
        var badRepresentative = new ExpertPartition(new[] { 0, 5 }, new[] { new[] { 1, 2 }, new[] { 3, 4 } }, new[] { 1, 2 }, 0, rates, 1);
        ((Action)(() => badRepresentative.Validate(6))).Should().Throw<InvalidOperationException>()
            .Where(e => e.Message.Contains("representative 2 of routed expert 1"));
    }

    private static Tensor RandomMarkers(int q, int dh, int kAct, int seed)
    {
        using var gen = new torch.Generator((ulong)seed);
        // Correlated scores so that clusters exist: a few latent factors plus noise.
        var factors = randn(new long[] { q, 6 }, generator: gen).matmul(randn(new long[] { 6, dh }, generator: gen))
            .add_(randn(new long[] { q, dh }, generator: gen).mul_(Scalars.Of(0.5)), Scalars.One);
        return ActivationMarkers.Markers(factors, kAct);
    }

    private static float[][] Columns(Tensor markers)
    {
        using var cpu = markers.t().contiguous().cpu();
        var flat = cpu.data<float>().ToArray();
        int q = (int)markers.shape[0];
        return Enumerable.Range(0, (int)markers.shape[1]).Select(i => flat.AsSpan(i * q, q).ToArray()).ToArray();
    }

    private static double[] Mean(int[] group, float[][] columns) =>
        Enumerable.Range(0, columns[0].Length).Select(t => group.Average(i => (double)columns[i][t])).ToArray();

    private static double L1(float[] column, double[] centroid) =>
        column.Select((v, t) => Math.Abs(v - centroid[t])).Sum();

    private static double L1Objective(int[][] groups, double[][] centroids, float[][] columns) =>
        groups.Select((g, j) => g.Sum(i => L1(columns[i], centroids[j]))).Sum();
}
