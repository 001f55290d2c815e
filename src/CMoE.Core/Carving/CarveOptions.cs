namespace CMoE.Carving;

/// <summary>How to carve: the layout and the profiling/partitioning knobs of the CMoE method.</summary>
/// <remarks>
/// The defaults are this library's recipe, chosen on a development text (docs/benchmarks.md, "Carving quality"): raw
/// scores weighted by ||W_down[:, i]||, K_a = 40, mean router vectors, top-a routing and the ridge refit of the down
/// projections. <see cref="Authors"/> gives the authors' procedure (cosine score, K_a = 10, representative router rows,
/// no weighting, no refit) so the comparison can always be re-run.
/// </remarks>
public sealed record CarveOptions
{
    /// <summary>Default K_a of this library's recipe.</summary>
    public const int DefaultKAct = 40;

    /// <summary>Default relative ridge strength of <see cref="DownProjectionFit.Ridge"/>.</summary>
    public const double DefaultDownFitRidge = 0.3;

    /// <summary>The authors' procedure (method sections 1-4 as in their code) for <paramref name="layout"/>.</summary>
    public static CarveOptions Authors(MoeLayout layout) => new()
    {
        Layout = layout, KAct = ActivationMarkers.DefaultMarkersPerToken, Score = ActivationScore.Cosine, Iterations = 1,
        Routing = RouterSelection.TopK, RouterVectors = RouterVectors.Representative, NeuronWeighting = NeuronWeighting.None,
        DownFit = DownProjectionFit.None,
    };

    /// <summary>Whether these options are the authors' procedure (every knob as in <see cref="Authors"/>).</summary>
    public bool IsAuthors => this with { Batch = 8, DownFitRidge = DefaultDownFitRidge } == Authors(Layout);

    /// <summary>The expert layout, e.g. S2A2E16.</summary>
    public required MoeLayout Layout { get; init; }

    /// <summary>K_a: a neuron is "active" for a token when its |score| is among the K_a largest (default 40; the authors' 10).</summary>
    public int KAct { get; init; } = DefaultKAct;

    /// <summary>The activation score: the raw SwiGLU activation (default) or the authors' cosine form.</summary>
    public ActivationScore Score { get; init; } = ActivationScore.Raw;

    /// <summary>Balanced k-means rounds (1 = the authors' code: one assignment round).</summary>
    public int Iterations { get; init; } = 1;

    /// <summary>Router selection: the authors' top-a (default) or a calibrated threshold (dynamic-K).</summary>
    public RouterSelection Routing { get; init; } = RouterSelection.TopK;

    /// <summary>Router vectors: the expert's mean rows (default) or the representative neuron's rows (authors).</summary>
    public RouterVectors RouterVectors { get; init; } = RouterVectors.Mean;

    /// <summary>Neuron score weighting before the markers: by ||W_down[:, i]|| (default) or none (authors).</summary>
    public NeuronWeighting NeuronWeighting { get; init; } = NeuronWeighting.DownNorm;

    /// <summary>Down-projection refit after carving each layer: ridge (default, <see cref="DownProjectionRefit"/>) or none (authors).</summary>
    public DownProjectionFit DownFit { get; init; } = DownProjectionFit.Ridge;

    /// <summary>Relative ridge strength of <see cref="DownProjectionFit.Ridge"/> (lambda = ridge * mean diagonal of H^T H). Default 0.3.</summary>
    public double DownFitRidge { get; init; } = DefaultDownFitRidge;

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
