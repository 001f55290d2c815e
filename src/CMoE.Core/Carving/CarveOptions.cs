namespace CMoE.Carving;

/// <summary>How to carve: the layout and the profiling/partitioning knobs of the CMoE method.</summary>
public sealed record CarveOptions
{
    /// <summary>The expert layout, e.g. S2A2E16.</summary>
    public required MoeLayout Layout { get; init; }

    /// <summary>K_a: a neuron is "active" for a token when its |score| is among the K_a largest (default 10).</summary>
    public int KAct { get; init; } = 10;

    /// <summary>The activation score: the authors' cosine form (default) or the raw SwiGLU activation.</summary>
    public ActivationScore Score { get; init; } = ActivationScore.Cosine;

    /// <summary>Balanced k-means rounds (1 = the authors' code: one assignment round).</summary>
    public int Iterations { get; init; } = 1;

    /// <summary>Router selection: the authors' top-a (default) or a calibrated threshold (dynamic-K).</summary>
    public RouterSelection Routing { get; init; } = RouterSelection.TopK;

    /// <summary>Router vectors: the representative neuron's rows (authors, default) or the expert's mean rows.</summary>
    public RouterVectors RouterVectors { get; init; } = RouterVectors.Representative;

    /// <summary>Neuron score weighting before the markers: none (authors, default) or by ||W_down[:, i]||.</summary>
    public NeuronWeighting NeuronWeighting { get; init; } = NeuronWeighting.None;

    /// <summary>Down-projection refit after carving each layer: none (authors, default) or ridge (<see cref="DownProjectionRefit"/>).</summary>
    public DownProjectionFit DownFit { get; init; } = DownProjectionFit.None;

    /// <summary>Relative ridge strength of <see cref="DownProjectionFit.Ridge"/> (lambda = ridge * mean diagonal of H^T H).</summary>
    public double DownFitRidge { get; init; } = 0.1;

    /// <summary>Calibration windows per forward pass while carving (bounds memory).</summary>
    public int Batch { get; init; } = 8;

    /// <summary>Checks the knobs.</summary>
    public void Validate(int intermediateSize)
    {
        Layout.Validate(intermediateSize);
        if (KAct < 1 || KAct > intermediateSize)
            throw new ArgumentException($"k-act must be between 1 and the FFN width {intermediateSize} (got {KAct}).");
        if (Iterations < 1) throw new ArgumentException($"iterations must be at least 1 (got {Iterations}).");
        if (!(DownFitRidge > 0) || double.IsInfinity(DownFitRidge)) throw new ArgumentException($"down-fit ridge must be a positive number (got {DownFitRidge}).");
        if (Batch < 1) throw new ArgumentException($"batch must be at least 1 (got {Batch}).");
    }
}
