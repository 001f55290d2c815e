namespace CMoE.Modeling.MoE;

/// <summary>
/// Sizes of one carved FFN: a shared expert of <see cref="SharedSize"/> neurons (always on) and
/// <see cref="RoutedExperts"/> routed experts of <see cref="ExpertSize"/> neurons each, of which
/// <see cref="ActiveExperts"/> are selected per token.
/// </summary>
/// <param name="Hidden">Model width d.</param>
/// <param name="SharedSize">Neurons in the shared expert (s x m plus any remainder of d_h / e).</param>
/// <param name="RoutedExperts">Number of routed experts, e - s.</param>
/// <param name="ExpertSize">Neurons per routed expert, m.</param>
/// <param name="ActiveExperts">Routed experts selected per token, a.</param>
/// <param name="Activation">The gated FFN's activation (the dense block's: SiLU, or tanh-GELU for Gemma-2), used by experts and router alike.</param>
public sealed record MoeShape(int Hidden, int SharedSize, int RoutedExperts, int ExpertSize, int ActiveExperts, GatedActivation Activation = GatedActivation.Silu)
{
    /// <summary>FFN neurons of the dense block this one was carved from.</summary>
    public int IntermediateSize => SharedSize + RoutedExperts * ExpertSize;

    /// <summary>Fraction of FFN neurons used per token.</summary>
    public double ActiveFraction => (SharedSize + ActiveExperts * (double)ExpertSize) / IntermediateSize;
}
