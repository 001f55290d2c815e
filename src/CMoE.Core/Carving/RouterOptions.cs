namespace CMoE.Carving;

/// <summary>How the carved router picks routed experts per token (<see cref="CarveOptions.Routing"/>).</summary>
public enum RouterSelection
{
    /// <summary>The authors' procedure (default): the top a experts of p + b, a fixed count per token.</summary>
    TopK = 0,

    /// <summary>
    /// Dynamic-K: every expert with p + b &gt;= tau, one tau per layer calibrated on the carving tokens so the mean count
    /// per token there is a (<see cref="Modeling.MoE.ThresholdRouting"/>); the count varies per token.
    /// </summary>
    Threshold = 1,
}

/// <summary>Where the router's G and U rows come from (<see cref="CarveOptions.RouterVectors"/>).</summary>
public enum RouterVectors
{
    /// <summary>The authors' procedure (default): the normalised gate / up rows of each expert's representative neuron.</summary>
    Representative = 0,

    /// <summary>The normalised mean of the expert's normalised gate / up rows (ExpertWeaver-style).</summary>
    Mean = 1,
}

/// <summary>How neuron scores are weighted before the top-K_a markers are taken (<see cref="CarveOptions.NeuronWeighting"/>).</summary>
public enum NeuronWeighting
{
    /// <summary>The authors' procedure (default): the score alone.</summary>
    None = 0,

    /// <summary>
    /// The score times ||W_down[:, i]||, the neuron's output contribution: markers, activation rates (hence the shared
    /// expert) and clustering then favour neurons that move the FFN output.
    /// </summary>
    DownNorm = 1,
}
