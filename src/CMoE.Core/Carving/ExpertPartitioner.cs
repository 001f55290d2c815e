using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Carving;

/// <summary>
/// Carves the neurons of one FFN into experts from their activation markers
/// (cmoe-method.md, sections 2-3): the most active neurons form the shared expert, the rest are
/// clustered into equally sized routed experts by exact balanced L1 assignment.
/// </summary>
public static class ExpertPartitioner
{
    /// <summary>Calibration tokens processed per chunk.</summary>
    private const int ChunkRows = 1024;

    /// <summary>Partitions the FFN neurons described by <paramref name="markers"/>.</summary>
    /// <param name="markers">Activation markers a_{t,i}, [q, d_h], 0/1 (see <see cref="ActivationMarkers"/>).</param>
    /// <param name="layout">The MoE layout; it must fit d_h (<see cref="MoeLayout.Validate"/>).</param>
    /// <param name="iterations">
    /// Maximum assignment rounds: 1 reproduces the authors' code (one balanced assignment to the initial
    /// centroids); more rounds recompute centroids as group means and reassign (k-means style, as the
    /// paper describes), stopping early when the assignment no longer changes.
    /// </param>
    /// <returns>The partition; shared neurons, routed experts (groups ordered by the activation rate of their initial centroid neuron), representatives.</returns>
    public static ExpertPartition Partition(Tensor markers, MoeLayout layout, int iterations = 1)
    {
        ArgumentNullException.ThrowIfNull(markers);
        ArgumentNullException.ThrowIfNull(layout);
        if (markers.ndim != 2 || markers.shape[0] < 1 || markers.shape[1] > int.MaxValue)
        {
            throw new ArgumentException(
                $"Markers must be a non-empty 2-D [tokens, neurons] tensor; got shape [{string.Join(", ", markers.shape)}].",
                nameof(markers));
        }
        if (iterations < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(iterations), iterations,
                "Use at least one assignment round (1 = the authors' code).");
        }
        int dh = (int)markers.shape[1];
        layout.Validate(dh);
        int m = layout.ExpertSize(dh), k = layout.Routed, sharedSize = layout.SharedSize(dh);

        using var scope = NewDisposeScope();
        double[] counts = MarkerCounts(markers);                           // [d_h], mu_i * q
        int[] byRate = RankByRate(counts);
        int[] shared = byRate[..sharedSize];
        Array.Sort(shared);
        int[] remaining = Enumerable.Range(0, dh).Except(shared).ToArray(); // ascending, n = k * m
        var remainingIndex = tensor(remaining.Select(i => (long)i).ToArray(), device: markers.device);

        // Initial centroids: marker columns of the k most active remaining neurons (weight 1).
        var seeds = tensor(byRate[sharedSize..(sharedSize + k)].Select(i => (long)i).ToArray(), device: markers.device);
        var centroidSums = markers.index_select(1, seeds).to_type(ScalarType.Float64);   // [q, k]
        double weight = 1;

        BalancedAssignment.Result assignment = default;
        int rounds = 0;
        while (rounds < iterations)
        {
            var cost = ScaledL1Costs(markers, remainingIndex, centroidSums, weight);  // [n * k], weight * L1
            var next = BalancedAssignment.Solve(cost, k);
            rounds++;
            bool unchanged = assignment.Groups is not null && assignment.Groups.AsSpan().SequenceEqual(next.Groups);
            assignment = next with { Cost = next.Cost / weight };
            if (unchanged)
            {
                break;   // the same assignment gives the same means: further rounds repeat
            }
            if (rounds < iterations)
            {
                centroidSums = GroupSums(markers, remainingIndex, assignment.Groups, k);   // [q, k]
                weight = m;
            }
        }

        var routed = Enumerable.Range(0, k).Select(_ => new List<int>(m)).ToArray();
        for (int i = 0; i < remaining.Length; i++)
        {
            routed[assignment.Groups[i]].Add(remaining[i]);
        }
        var representatives = Representatives(markers, remainingIndex, remaining, assignment.Groups, k, m);
        float[] rates = counts.Select(c => (float)(c / markers.shape[0])).ToArray();
        var partition = new ExpertPartition(shared, routed.Select(g => g.ToArray()).ToArray(), representatives,
            assignment.Cost, rates, rounds);
        partition.Validate(dh);
        return partition;
    }

    /// <summary>Neuron indices by activation rate, largest first, lower index first on ties.</summary>
    private static int[] RankByRate(double[] counts)
    {
        int[] order = Enumerable.Range(0, counts.Length).ToArray();
        Array.Sort(order, (x, y) => counts[x] != counts[y] ? counts[y].CompareTo(counts[x]) : x.CompareTo(y));
        return order;
    }

    /// <summary>Number of tokens marking each neuron (exact integers in float64); fails on non-0/1 markers.</summary>
    private static double[] MarkerCounts(Tensor markers)
    {
        using var scope = NewDisposeScope();
        long q = markers.shape[0];
        var counts = zeros(new[] { markers.shape[1] }, ScalarType.Float64, markers.device);   // [d_h]
        for (long start = 0; start < q; start += ChunkRows)
        {
            using var chunkScope = NewDisposeScope();
            var chunk = markers.narrow(0, start, Math.Min(ChunkRows, q - start)).to_type(ScalarType.Float64); // [rows, d_h]
            if (chunk.ne(0).logical_and(chunk.ne(1)).any().item<bool>())
            {
                throw new ArgumentException(
                    "Markers must hold only 0 and 1; compute them with ActivationMarkers.Markers.", nameof(markers));
            }
            counts.add_(chunk.sum(0));
        }
        return counts.cpu().data<double>().ToArray();
    }

    /// <summary>
    /// Row-major [n, k] matrix of weight * L1(c_i, S_j / weight) for binary columns c_i and centroid sums S_j:
    /// sum_t S_jt + sum_t c_it (weight - 2 S_jt), one matmul per chunk of tokens. With integer S and weight
    /// every entry is an exact integer in float64, so ties are exact and the result is deterministic.
    /// </summary>
    private static double[] ScaledL1Costs(Tensor markers, Tensor remainingIndex, Tensor centroidSums, double weight)
    {
        using var scope = NewDisposeScope();
        long q = markers.shape[0];
        var cost = zeros(new[] { remainingIndex.shape[0], centroidSums.shape[1] }, ScalarType.Float64, markers.device); // [n, k]
        for (long start = 0; start < q; start += ChunkRows)
        {
            using var chunkScope = NewDisposeScope();
            long rows = Math.Min(ChunkRows, q - start);
            var columns = RemainingColumns(markers, remainingIndex, start, rows);     // [rows, n]
            var sums = centroidSums.narrow(0, start, rows);                           // [rows, k]
            cost.add_(matmul(columns.t(), sums.mul(-2).add_(weight)));                // [n, k]
        }
        cost.add_(centroidSums.sum(0));                                               // + sum_t S_jt, broadcast over n
        return cost.cpu().contiguous().data<double>().ToArray();
    }

    /// <summary>Sum of the member marker columns of each group, [q, k] float64 (integer-valued).</summary>
    private static Tensor GroupSums(Tensor markers, Tensor remainingIndex, int[] groups, int k)
    {
        using var scope = NewDisposeScope();
        long q = markers.shape[0];
        var oneHot = zeros(new long[] { groups.Length, k }, ScalarType.Float64);       // [n, k]
        var groupIndex = tensor(groups.Select(g => (long)g).ToArray()).unsqueeze(1);   // [n, 1]
        oneHot.scatter_(1, groupIndex, ones(new long[] { groups.Length, 1 }, ScalarType.Float64));
        oneHot = oneHot.to(markers.device);
        var sums = empty(new[] { q, k }, ScalarType.Float64, markers.device);         // [q, k]
        for (long start = 0; start < q; start += ChunkRows)
        {
            using var chunkScope = NewDisposeScope();
            long rows = Math.Min(ChunkRows, q - start);
            var columns = RemainingColumns(markers, remainingIndex, start, rows);     // [rows, n]
            sums.narrow(0, start, rows).copy_(matmul(columns, oneHot));               // [rows, k]
        }
        return sums.MoveToOuterDisposeScope();
    }

    /// <summary>Per group, the member closest (L1) to the group's mean column; lowest neuron index on ties.</summary>
    private static int[] Representatives(Tensor markers, Tensor remainingIndex, int[] remaining, int[] groups, int k, int m)
    {
        using var scope = NewDisposeScope();
        var sums = GroupSums(markers, remainingIndex, groups, k);                    // [q, k]
        double[] cost = ScaledL1Costs(markers, remainingIndex, sums, m);              // [n * k], m * L1 to the mean
        var best = Enumerable.Repeat(-1, k).ToArray();
        for (int i = 0; i < remaining.Length; i++)                                   // ascending neuron order
        {
            int j = groups[i];
            if (best[j] < 0 || cost[(i * k) + j] < cost[(best[j] * k) + j])
            {
                best[j] = i;
            }
        }
        return best.Select(i => remaining[i]).ToArray();
    }

    /// <summary>Marker columns of the routed candidates for tokens [start, start + rows), float64.</summary>
    private static Tensor RemainingColumns(Tensor markers, Tensor remainingIndex, long start, long rows) =>
        markers.narrow(0, start, rows).index_select(1, remainingIndex).to_type(ScalarType.Float64);   // [rows, n]
}
