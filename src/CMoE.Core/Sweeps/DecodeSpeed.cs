using System.Diagnostics;
using CMoE.Modeling;
using static TorchSharp.torch;

namespace CMoE.Sweeps;

/// <summary>
/// A small self-contained decode benchmark: greedy decoding of <c>newTokens</c> tokens, one at a time
/// with the <see cref="KvCache"/>, after a short prompt; the prompt's prefill is not timed. Whatever makes
/// <see cref="LlamaForCausalLM.Forward"/> faster (e.g. a faster MoE block) shows up here unchanged.
/// </summary>
public static class DecodeSpeed
{
    /// <summary>
    /// Median decode tokens/s over <paramref name="runs"/> timed runs, after two untimed full-length warm-up runs (the
    /// first model measured in a process otherwise pays for the JIT's tiering of the code its steps call).
    /// </summary>
    /// <param name="model">The model (dense or carved).</param>
    /// <param name="prompt">Prompt token ids (at least one).</param>
    /// <param name="newTokens">Tokens generated per run (at least one).</param>
    /// <param name="runs">Timed runs (at least one).</param>
    public static double TokensPerSecond(LlamaForCausalLM model, IReadOnlyList<int> prompt, int newTokens = 32, int runs = 3)
    {
        if (prompt.Count == 0) throw new ArgumentException("The decode benchmark needs a prompt of at least one token.");
        if (newTokens < 1 || runs < 1) throw new ArgumentException("The decode benchmark needs newTokens >= 1 and runs >= 1.");
        for (int i = 0; i < 2; i++) Decode(model, prompt, newTokens);
        var rates = Enumerable.Range(0, runs).Select(_ => newTokens / Decode(model, prompt, newTokens)).OrderBy(r => r).ToArray();
        return runs % 2 == 1 ? rates[runs / 2] : (rates[runs / 2 - 1] + rates[runs / 2]) / 2;
    }

    /// <summary>Greedy-decodes <paramref name="newTokens"/> tokens and returns the seconds they took (prefill excluded).</summary>
    private static double Decode(LlamaForCausalLM model, IReadOnlyList<int> prompt, int newTokens)
    {
        using var noGrad = no_grad();
        using var cache = new KvCache(model.Config, 1, prompt.Count + newTokens, model.Device, model.DType);
        long next;
        using (var scope = NewDisposeScope())
        {
            var ids = tensor(prompt.Select(t => (long)t).ToArray()).unsqueeze(0);   // [1, p]
            var logits = model.Forward(ids, cache);                                  // [1, p, vocab]
            next = logits[0, -1].argmax().item<long>();
        }
        var clock = Stopwatch.StartNew();
        for (int i = 1; i < newTokens; i++)
        {
            using var scope = NewDisposeScope();
            var logits = model.Forward(tensor(new[] { next }).unsqueeze(0), cache);  // [1, 1, vocab]
            next = logits[0, -1].argmax().item<long>();
        }
        // newTokens - 1 single-token steps were timed; the first new token came from the prefill.
        double seconds = clock.Elapsed.TotalSeconds;
        return newTokens > 1 ? seconds * newTokens / (newTokens - 1) : Math.Max(seconds, 1e-9);
    }
}
