using TorchSharp;
using CMoE.Modeling;
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

    /// <summary>2^24: integers below it are exact in float32.</summary>
    private const int ExactFloat32Limit = 1 << 24;

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
        var centroidSums = markers.index_select(1, seeds).to_type(ScalarType.Float32);   // [q, k]
        int weight = 1;

        BalancedAssignment.Result assignment = default;
        int rounds = 0;
        while (rounds < iterations)
        {
            var cost = ScaledL1Costs(markers, remainingIndex, centroidSums, weight);  // [n * k], weight * L1
            var next = BalancedAssignment.Solve(cost, k);
            rounds++;
            bool unchanged = assignment.Groups is not null && assignment.Groups.AsSpan().SequenceEqual(next.Groups);
            assignment = next with { Cost = next.Cost / weight };   // weight * L1 -> L1
            if (unchanged)
            {
                break;   // the same assignment gives the same means: further rounds repeat
            }
            if (rounds < iterations)
            {
                centroidSums = GroupSums(markers, remaining, assignment.Groups, k);   // [q, k]
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
            var chunk = MarkerRows(markers, start, Math.Min(ChunkRows, q - start));           // [rows, d_h]
            if (chunk.ne(Scalars.Of(0L)).logical_and(chunk.ne(Scalars.Of(1L))).any().item<bool>())
            {
                throw new ArgumentException(
                    "Markers must hold only 0 and 1; compute them with ActivationMarkers.Markers.", nameof(markers));
            }
            counts.add_(chunk.sum(new long[] { 0 }).to_type(ScalarType.Float64), Scalars.One);              // per-chunk sums <= rows: exact
        }
        return counts.cpu().data<double>().ToArray();
    }

    /// <summary>
    /// Row-major [n, k] matrix of weight * L1(c_i, S_j / weight) for the binary columns c_i of the routed
    /// candidates and centroid sums S_j (integers in [0, weight]):
    /// sum_t S_jt + sum_t c_it (weight - 2 S_jt). One float32 matmul per chunk of tokens over all d_h
    /// columns; every partial sum is an integer below 2^24, so it is exact, and chunks accumulate in
    /// float64. Exact integers make ties exact and the result independent of BLAS summation order.
    /// </summary>
    private static double[] ScaledL1Costs(Tensor markers, Tensor remainingIndex, Tensor centroidSums, int weight)
    {
        using var scope = NewDisposeScope();
        long q = markers.shape[0];
        long rowsPerChunk = Math.Clamp(ExactFloat32Limit / Math.Max(weight, 1), 1, ChunkRows);
        var cost = zeros(new[] { markers.shape[1], centroidSums.shape[1] }, ScalarType.Float64, markers.device); // [d_h, k]
        for (long start = 0; start < q; start += rowsPerChunk)
        {
            using var chunkScope = NewDisposeScope();
            long rows = Math.Min(rowsPerChunk, q - start);
            var columns = MarkerRows(markers, start, rows);                                    // [rows, d_h]
            var coefficients = centroidSums.narrow(0, start, rows).mul(Scalars.Of(-2L)).add_(Scalars.Of((long)weight), Scalars.One);       // [rows, k], in [-w, w]
            cost.add_(matmul(columns.t(), coefficients).to_type(ScalarType.Float64), Scalars.One);          // [d_h, k]
        }
        var routedCost = cost.index_select(0, remainingIndex);                                 // [n, k]
        routedCost.add_(centroidSums.to_type(ScalarType.Float64).sum(new long[] { 0 }), Scalars.One);       // + sum_t S_jt, over n
        return routedCost.cpu().contiguous().data<double>().ToArray();
    }

    /// <summary>Sum of the member marker columns of each group, [q, k] float32 (integers in [0, m], exact).</summary>
    private static Tensor GroupSums(Tensor markers, int[] remaining, int[] groups, int k)
    {
        using var scope = NewDisposeScope();
        long q = markers.shape[0];
        var membership = new float[markers.shape[1] * k];                                      // [d_h, k] one-hot
        for (int i = 0; i < remaining.Length; i++)
        {
            membership[((long)remaining[i] * k) + groups[i]] = 1;
        }
        var oneHot = tensor(membership).reshape(markers.shape[1], k).to(markers.device);       // [d_h, k]
        var sums = empty(new[] { q, k }, ScalarType.Float32, markers.device);                  // [q, k]
        for (long start = 0; start < q; start += ChunkRows)
        {
            using var chunkScope = NewDisposeScope();
            long rows = Math.Min(ChunkRows, q - start);
            sums.narrow(0, start, rows).copy_(matmul(MarkerRows(markers, start, rows), oneHot)); // [rows, k]
        }
        return sums.MoveToOuterDisposeScope();
    }

    /// <summary>Per group, the member closest (L1) to the group's mean column; lowest neuron index on ties.</summary>
    private static int[] Representatives(Tensor markers, Tensor remainingIndex, int[] remaining, int[] groups, int k, int m)
    {
        using var scope = NewDisposeScope();
        var sums = GroupSums(markers, remaining, groups, k);                                  // [q, k]
        double[] cost = ScaledL1Costs(markers, remainingIndex, sums, m);                      // [n * k], m * L1 to the mean
        var best = Enumerable.Repeat(-1, k).ToArray();
        for (int i = 0; i < remaining.Length; i++)                                           // ascending neuron order
        {
            int j = groups[i];
            if (best[j] < 0 || cost[(i * k) + j] < cost[(best[j] * k) + j])
            {
                best[j] = i;
            }
        }
        return best.Select(i => remaining[i]).ToArray();
    }

    /// <summary>Marker rows [start, start + rows) as float32, [rows, d_h] (a view when already float32).</summary>
    private static Tensor MarkerRows(Tensor markers, long start, long rows) =>
        markers.narrow(0, start, rows).to_type(ScalarType.Float32);
}
