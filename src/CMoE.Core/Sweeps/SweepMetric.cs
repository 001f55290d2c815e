using CMoE.Evaluation;
using CMoE.Modeling;

namespace CMoE.Sweeps;

/// <summary>
/// The quality measure a sweep ranks layouts by: perplexity on an evaluation text by default, or any
/// user delegate (e.g. a downstream score computed by an ML.NET pipeline on the carved model).
/// </summary>
/// <param name="Name">Short name for tables and axes, e.g. "perplexity" or "accuracy".</param>
/// <param name="Evaluate">Computes the metric of a (carved or dense) model; must not dispose or modify it.</param>
/// <param name="LowerIsBetter">True for losses such as perplexity, false for scores such as accuracy.</param>
public sealed record SweepMetric(string Name, Func<LlamaForCausalLM, double> Evaluate, bool LowerIsBetter = true)
{
    /// <summary>
    /// Perplexity with the evaluation contract of <see cref="PerplexityEvaluator"/>: consecutive windows
    /// of <paramref name="seqLen"/> tokens of <paramref name="stream"/> (BOS + encode(text)), at most
    /// <paramref name="maxWindows"/> of them.
    /// </summary>
    public static SweepMetric Perplexity(IReadOnlyList<int> stream, int seqLen = 512, int maxWindows = 64, int batch = 4)
    {
        PerplexityEvaluator.Windows(stream, seqLen, maxWindows);   // fail now, not after profiling, on a short text
        return new SweepMetric("perplexity", m => PerplexityEvaluator.Evaluate(m, stream, seqLen, maxWindows, batch).Perplexity);
    }
}
