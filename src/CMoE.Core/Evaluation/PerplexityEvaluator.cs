using System.Diagnostics;
using CMoE.Modeling;
using static TorchSharp.torch;

namespace CMoE.Evaluation;

/// <summary>The result of a perplexity evaluation.</summary>
/// <param name="Perplexity">exp(mean NLL).</param>
/// <param name="MeanNll">Mean negative log-likelihood per predicted token (nats).</param>
/// <param name="Tokens">Tokens predicted (windows x (seq_len - 1)).</param>
/// <param name="Windows">Windows evaluated.</param>
/// <param name="Seconds">Wall time of the forward passes.</param>
public sealed record PerplexityResult(double Perplexity, double MeanNll, long Tokens, int Windows, double Seconds);

/// <summary>
/// The evaluation contract every command reuses: the token stream is BOS + encode(whole text); it is cut
/// into consecutive non-overlapping windows of <c>seqLen</c> tokens from the start (the last partial
/// window dropped, at most <c>maxWindows</c>); perplexity = exp(mean NLL of positions 1..seqLen-1 of
/// each window given the earlier tokens of that window).
/// </summary>
public static class PerplexityEvaluator
{
    /// <summary>Cuts a token stream into windows [n, seqLen].</summary>
    /// <exception cref="ArgumentException">The stream is shorter than one window.</exception>
    public static long[,] Windows(IReadOnlyList<int> stream, int seqLen, int maxWindows)
    {
        if (seqLen < 2) throw new ArgumentException($"seq-len must be at least 2 (got {seqLen}).");
        int n = Math.Min(stream.Count / seqLen, maxWindows);
        if (n == 0)
            throw new ArgumentException($"The text has {stream.Count} tokens, fewer than one window of {seqLen}. Use a longer text or a smaller --seq-len.");
        var windows = new long[n, seqLen];
        for (int w = 0; w < n; w++)
            for (int t = 0; t < seqLen; t++)
                windows[w, t] = stream[w * seqLen + t];
        return windows;
    }

    /// <summary>Evaluates the model on windows of the stream, <paramref name="batch"/> windows per forward pass.</summary>
    public static PerplexityResult Evaluate(LlamaForCausalLM model, IReadOnlyList<int> stream, int seqLen = 512,
        int maxWindows = 256, int batch = 4, IProgress<double>? progress = null, CancellationToken cancel = default)
    {
        var windows = Windows(stream, seqLen, maxWindows);
        int n = windows.GetLength(0);
        using var all = tensor(windows);                                               // [n, seqLen]
        double nllSum = 0;
        long count = 0;
        var clock = Stopwatch.StartNew();
        using var noGrad = no_grad();
        for (int start = 0; start < n; start += batch)
        {
            cancel.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            var ids = all.narrow(0, start, Math.Min(batch, n - start));               // [b, seqLen]
            nllSum += SumNll(model, ids).item<double>();
            count += ids.shape[0] * (seqLen - 1);
            progress?.Report((double)Math.Min(start + batch, n) / n);
        }
        double mean = nllSum / count;
        return new PerplexityResult(Math.Exp(mean), mean, count, n, clock.Elapsed.TotalSeconds);
    }

    /// <summary>Sum over the batch of the NLL of tokens 1..t-1 given their prefixes (fp64 scalar).</summary>
    public static Tensor SumNll(LlamaForCausalLM model, Tensor ids)
    {
        using var scope = NewDisposeScope();
        var hidden = model.Hidden(ids);                                                // [b, t, d]
        long t = ids.shape[1];
        var logits = model.Logits(hidden.narrow(1, 0, t - 1)).to(ScalarType.Float32);  // [b, t-1, vocab]
        var logProbs = logits.log_softmax(-1);
        var targets = ids.narrow(1, 1, t - 1).to(logits.device).unsqueeze(-1);       // [b, t-1, 1]
        var nll = -logProbs.gather(-1, targets);                                       // [b, t-1, 1]
        return nll.to(ScalarType.Float64).sum().cpu().MoveToOuterDisposeScope();
    }
}
