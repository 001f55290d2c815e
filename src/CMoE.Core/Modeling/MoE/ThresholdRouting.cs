using static TorchSharp.torch;

namespace CMoE.Modeling.MoE;

/// <summary>
/// Dynamic-K ("threshold") routing, an alternative to the authors' fixed top-a selection: a routed expert j is
/// used for a token when p_j + b_j &gt;= tau, with p the <see cref="TrainingFreeRouter"/>'s softmax and tau one
/// scalar per layer calibrated on the carving tokens so that the mean number of routed experts per token equals a.
/// Tokens with a flat router distribution then use fewer experts and peaked ones more (up to all routed experts),
/// at the same mean cost on the calibration tokens. The threshold is stored in config.json's cmoe section
/// (<c>router_thresholds</c>, one per layer); a block without one routes top-a.
/// </summary>
public static class ThresholdRouting
{
    /// <summary>
    /// The threshold tau for which exactly round(<paramref name="meanExperts"/> x q) of the q x E values of
    /// <paramref name="scores"/> [q, E] (p + b on calibration tokens) are &gt;= tau: the mean count per token is then a.
    /// </summary>
    public static float Calibrate(Tensor scores, double meanExperts)
    {
        if (scores.ndim != 2) throw new ArgumentException("Router scores must be [tokens, experts].", nameof(scores));
        long q = scores.shape[0], e = scores.shape[1];
        if (meanExperts <= 0 || meanExperts > e)
            throw new ArgumentOutOfRangeException(nameof(meanExperts), meanExperts, $"The mean number of routed experts must be in (0, {e}].");
        using var scope = NewDisposeScope();
        long k = Math.Clamp((long)Math.Round(meanExperts * q), 1, q * e);
        var flat = scores.to(ScalarType.Float32).flatten();
        var kth = flat.topk((int)k).values[k - 1];
        return kth.cpu().item<float>();
    }

    /// <summary>
    /// Tensor selection: the routed experts with score &gt;= <paramref name="threshold"/> of each row of
    /// <paramref name="scores"/> [n, E] as [n, E] int64, best first, with -1 in the slots not used.
    /// </summary>
    public static Tensor Select(Tensor scores, float threshold)
    {
        using var scope = NewDisposeScope();
        var (values, indexes) = scores.sort(-1, descending: true);                  // [n, E]
        using var tau = Scalars.Owned(threshold);
        var keep = values.ge(tau);
        return indexes.masked_fill(keep.logical_not(), Scalars.Of(-1L)).MoveToOuterDisposeScope();
    }

    /// <summary>Mean number of routed experts per token that <paramref name="threshold"/> selects on <paramref name="scores"/> [q, E].</summary>
    public static double MeanCount(Tensor scores, float threshold)
    {
        using var scope = NewDisposeScope();
        using var tau = Scalars.Owned(threshold);
        return scores.ge(tau).to(ScalarType.Float64).sum(-1).mean().cpu().item<double>();
    }
}
