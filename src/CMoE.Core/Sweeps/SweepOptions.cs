namespace CMoE.Sweeps;

/// <summary>What a <see cref="SweepExperiment"/> searches, how long, and how it measures.</summary>
public sealed record SweepOptions
{
    /// <summary>The layouts, scores and K_a values to try.</summary>
    public required SweepSpace Space { get; init; }

    /// <summary>The quality metric (perplexity by default via <see cref="SweepMetric.Perplexity"/>).</summary>
    public required SweepMetric Metric { get; init; }

    /// <summary>Grid (in order) or seeded random order.</summary>
    public SearchStrategy Strategy { get; init; } = SearchStrategy.Grid;

    /// <summary>At most this many carved trials (null: every candidate).</summary>
    public int? MaxTrials { get; init; }

    /// <summary>
    /// Wall-clock budget: no new trial starts once it is spent (the running one finishes). Null: no limit.
    /// </summary>
    public TimeSpan? TimeBudget { get; init; }

    /// <summary>Seed of the random search order.</summary>
    public int Seed { get; init; }

    /// <summary>Balanced k-means rounds per carve (1 = the authors' code).</summary>
    public int Iterations { get; init; } = 1;

    /// <summary>Calibration windows per profiling forward pass.</summary>
    public int ProfileBatch { get; init; } = 8;

    /// <summary>Prompt of the decode-speed benchmark (null or empty: tokens/s is not measured, reported as NaN).</summary>
    public IReadOnlyList<int>? DecodePrompt { get; init; }

    /// <summary>Tokens generated per decode-speed run.</summary>
    public int DecodeTokens { get; init; } = 32;

    /// <summary>Timed decode-speed runs (the median is reported).</summary>
    public int DecodeRuns { get; init; } = 3;

    /// <summary>
    /// The weight format every measurement (dense and each trial's perplexity and tokens/s) runs in. Profiling and carving
    /// always run on fp32 weights; each model is then converted (bf16 or int8, as <c>cmoe eval --weights</c> would load it).
    /// Default fp32.
    /// </summary>
    public Modeling.Weights.WeightFormat Weights { get; init; } = Modeling.Weights.WeightFormat.Fp32;

    /// <summary>Also measure the dense model (the reference point; not a trial, not on the fronts).</summary>
    public bool IncludeDense { get; init; } = true;

    /// <summary>Checks the knobs.</summary>
    public void Validate(int intermediateSize)
    {
        Space.Validate(intermediateSize);
        if (MaxTrials is < 1) throw new ArgumentException($"The trial budget must be at least 1 (got {MaxTrials}).");
        if (TimeBudget is { } t && t <= TimeSpan.Zero) throw new ArgumentException($"The time budget must be positive (got {t}).");
        if (Iterations < 1) throw new ArgumentException($"iterations must be at least 1 (got {Iterations}).");
        if (ProfileBatch < 1) throw new ArgumentException($"The profile batch must be at least 1 (got {ProfileBatch}).");
        if (DecodeTokens < 1 || DecodeRuns < 1) throw new ArgumentException("Decode tokens and runs must be at least 1.");
    }
}
