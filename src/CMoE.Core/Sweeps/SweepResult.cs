using CMoE.Carving;

namespace CMoE.Sweeps;

/// <summary>One measured layout of a sweep.</summary>
/// <param name="Index">Trial number, from 0, in the order run.</param>
/// <param name="Candidate">Layout, score and K_a.</param>
/// <param name="ActiveFraction">Active FFN fraction (s + a) / e.</param>
/// <param name="ActiveParameters">Parameters used per token (<see cref="Sweeps.ActiveParameters.Carved"/>).</param>
/// <param name="Metric">The metric (perplexity by default).</param>
/// <param name="TokensPerSecond">Median greedy decode tokens/s (NaN when not measured).</param>
/// <param name="CarveSeconds">Carving from the cached profile (partitioning and building the MoE blocks).</param>
/// <param name="MetricSeconds">Computing the metric.</param>
/// <param name="ParetoByFraction">On the front of (metric, active fraction).</param>
/// <param name="ParetoBySpeed">On the front of (metric, tokens/s).</param>
public sealed record SweepTrial(int Index, SweepCandidate Candidate, double ActiveFraction, long ActiveParameters, double Metric,
    double TokensPerSecond, double CarveSeconds, double MetricSeconds, bool ParetoByFraction = false, bool ParetoBySpeed = false)
{
    /// <summary>The layout.</summary>
    public MoeLayout Layout => Candidate.Layout;
}

/// <summary>The dense model's figures, the reference point of a sweep.</summary>
/// <param name="ActiveParameters">All parameters.</param>
/// <param name="Metric">The metric.</param>
/// <param name="TokensPerSecond">Median decode tokens/s (NaN when not measured).</param>
public sealed record DenseReference(long ActiveParameters, double Metric, double TokensPerSecond);

/// <summary>The outcome of a sweep.</summary>
/// <param name="MetricName">Name of the metric.</param>
/// <param name="LowerIsBetter">Direction of the metric.</param>
/// <param name="Trials">Every trial run, with its Pareto flags.</param>
/// <param name="Dense">The dense reference, or null.</param>
/// <param name="Profiles">Calibration profiles computed (one per score and K_a used).</param>
/// <param name="ProfileSeconds">Time spent profiling.</param>
/// <param name="TotalSeconds">Wall time of the sweep.</param>
/// <param name="CandidatesSkipped">Candidates not run because the trial or time budget ran out.</param>
/// <param name="StoppedByTime">Whether the time budget stopped the sweep.</param>
public sealed record SweepResult(string MetricName, bool LowerIsBetter, IReadOnlyList<SweepTrial> Trials, DenseReference? Dense,
    int Profiles, double ProfileSeconds, double TotalSeconds, int CandidatesSkipped, bool StoppedByTime)
{
    /// <summary>
    /// Recomputes both Pareto flags of <paramref name="trials"/>: quality (metric, in its direction) against
    /// active FFN fraction (minimised) and against decode tokens/s (maximised).
    /// </summary>
    public static IReadOnlyList<SweepTrial> MarkPareto(IReadOnlyList<SweepTrial> trials, bool lowerIsBetter)
    {
        double Loss(SweepTrial t) => lowerIsBetter ? t.Metric : -t.Metric;
        var byFraction = ParetoFront.Mark(trials.Select(t => (t.ActiveFraction, Loss(t))).ToList());
        var bySpeed = ParetoFront.Mark(trials.Select(t => (-t.TokensPerSecond, Loss(t))).ToList());
        return trials.Select((t, i) => t with { ParetoByFraction = byFraction[i], ParetoBySpeed = bySpeed[i] }).ToList();
    }

    /// <summary>
    /// The recommended trial: the best-metric trial on the (metric, active fraction) front whose active
    /// fraction is at most <paramref name="maxActiveFraction"/>; without a target, the knee of that front.
    /// Null when no trial fits.
    /// </summary>
    public SweepTrial? Recommend(double? maxActiveFraction = null)
    {
        var front = Trials.Where(t => t.ParetoByFraction && !double.IsNaN(t.Metric)).ToList();
        if (maxActiveFraction is { } target)
        {
            var fits = front.Where(t => t.ActiveFraction <= target + 1e-12).ToList();
            if (fits.Count == 0) return null;
            return LowerIsBetter ? fits.MinBy(t => t.Metric) : fits.MaxBy(t => t.Metric);
        }
        var points = Trials.Select(t => (t.ActiveFraction, LowerIsBetter ? t.Metric : -t.Metric)).ToList();
        int knee = ParetoFront.Knee(points, Trials.Select(t => t.ParetoByFraction).ToList());
        return knee < 0 ? null : Trials[knee];
    }
}

/// <summary>A progress event of a sweep: a log line and, when a trial just finished, that trial.</summary>
/// <param name="Message">A human-readable line (e.g. "profiling calibration once (cosine, K_a = 10)").</param>
/// <param name="TrialsDone">Trials finished so far.</param>
/// <param name="TrialsPlanned">Trials planned (the trial budget or the number of candidates).</param>
/// <param name="Trial">The trial that just finished, or null.</param>
public sealed record SweepProgress(string Message, int TrialsDone, int TrialsPlanned, SweepTrial? Trial = null);
