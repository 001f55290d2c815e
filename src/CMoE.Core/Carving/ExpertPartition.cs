namespace CMoE.Carving;

/// <summary>
/// The carving of one FFN's d_h neurons into a shared expert and equally sized routed experts
/// (cmoe-method.md, sections 2-3). Neuron indices refer to rows of W_gate/W_up and columns of W_down.
/// </summary>
public sealed class ExpertPartition
{
    /// <summary>Creates a partition; call <see cref="Validate"/> to check it covers an FFN.</summary>
    /// <param name="shared">Shared-expert neurons, ascending.</param>
    /// <param name="routed">Neurons of each routed expert, each ascending, all the same size.</param>
    /// <param name="representatives">Representative neuron of each routed expert (used by the router).</param>
    /// <param name="assignmentCost">Total L1 distance of the routed neurons to the centroids of the last assignment round.</param>
    /// <param name="activationRates">Activation rate mu_i of every neuron, [d_h].</param>
    /// <param name="rounds">Assignment rounds actually run.</param>
    public ExpertPartition(int[] shared, int[][] routed, int[] representatives, double assignmentCost,
        float[] activationRates, int rounds)
    {
        Shared = shared ?? throw new ArgumentNullException(nameof(shared));
        Routed = routed ?? throw new ArgumentNullException(nameof(routed));
        Representatives = representatives ?? throw new ArgumentNullException(nameof(representatives));
        ActivationRates = activationRates ?? throw new ArgumentNullException(nameof(activationRates));
        AssignmentCost = assignmentCost;
        Rounds = rounds;
    }

    /// <summary>
    /// Neurons of the shared (always active) expert, ascending: the s*m most active neurons plus the
    /// d_h % e remainder neurons (see <see cref="MoeLayout.SharedSize"/>).
    /// </summary>
    public int[] Shared { get; }

    /// <summary>Neurons of each routed expert, each ascending, exactly m per expert.</summary>
    public int[][] Routed { get; }

    /// <summary>
    /// Representative neuron of each routed expert: the member closest (L1) to the expert's mean
    /// marker column (lowest index on ties).
    /// </summary>
    public int[] Representatives { get; }

    /// <summary>Total L1 distance of the routed neurons' marker columns to the centroids of the last assignment round (optimal for those centroids).</summary>
    public double AssignmentCost { get; }

    /// <summary>Activation rate mu_i of every neuron (fraction of calibration tokens that marked it), [d_h].</summary>
    public float[] ActivationRates { get; }

    /// <summary>Assignment rounds actually run (at most the requested iterations; fewer if assignments stopped changing).</summary>
    public int Rounds { get; }

    /// <summary>
    /// Checks that the partition covers an FFN of <paramref name="intermediateSize"/> neurons: every
    /// neuron appears exactly once, routed experts are equally sized and sorted, each representative is
    /// a member of its expert.
    /// </summary>
    /// <param name="intermediateSize">The FFN width d_h.</param>
    /// <exception cref="InvalidOperationException">The partition is inconsistent; the message says where.</exception>
    public void Validate(int intermediateSize)
    {
        if (ActivationRates.Length != intermediateSize)
        {
            Fail($"it holds {ActivationRates.Length} activation rates for an FFN of {intermediateSize} neurons");
        }
        if (Routed.Length == 0)
        {
            Fail("it has no routed experts");
        }
        if (Representatives.Length != Routed.Length)
        {
            Fail($"it has {Representatives.Length} representatives for {Routed.Length} routed experts");
        }
        var seen = new int[intermediateSize];
        CheckGroup(Shared, "the shared expert", seen, intermediateSize);
        int m = Routed[0]?.Length ?? 0;
        for (int j = 0; j < Routed.Length; j++)
        {
            var group = Routed[j];
            if (group is null || group.Length != m || m == 0)
            {
                Fail($"routed expert {j} has {group?.Length ?? 0} neurons, expected {m} (all routed experts equal and non-empty)");
            }
            CheckGroup(group!, $"routed expert {j}", seen, intermediateSize);
            if (Array.BinarySearch(group!, Representatives[j]) < 0)
            {
                Fail($"representative {Representatives[j]} of routed expert {j} is not one of its neurons");
            }
        }
        int missing = Array.IndexOf(seen, 0);
        if (missing >= 0)
        {
            Fail($"neuron {missing} belongs to no expert");
        }
    }

    private static void CheckGroup(int[] group, string name, int[] seen, int intermediateSize)
    {
        for (int t = 0; t < group.Length; t++)
        {
            int neuron = group[t];
            if (neuron < 0 || neuron >= intermediateSize)
            {
                Fail($"{name} holds neuron {neuron}, outside [0, {intermediateSize})");
            }
            if (t > 0 && group[t - 1] >= neuron)
            {
                Fail($"{name} is not strictly ascending at position {t}");
            }
            if (++seen[neuron] > 1)
            {
                Fail($"neuron {neuron} appears in more than one expert ({name} among them)");
            }
        }
    }

    private static void Fail(string problem) =>
        throw new InvalidOperationException($"Invalid expert partition: {problem}. Rebuild it with ExpertPartitioner.Partition.");
}
