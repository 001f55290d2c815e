using static TorchSharp.torch;

namespace CMoE.Modeling;

/// <summary>Greedy decoding with the KV cache: one prefill pass over the prompt, then one token per step.</summary>
public static class GreedyGenerator
{
    /// <summary>
    /// Generates up to <paramref name="maxNewTokens"/> tokens after <paramref name="prompt"/> (stopping at
    /// <paramref name="eosId"/> when given) and returns only the new tokens.
    /// </summary>
    public static int[] Generate(LlamaForCausalLM model, IReadOnlyList<int> prompt, int maxNewTokens, int? eosId = null,
        CancellationToken cancel = default)
    {
        if (prompt.Count == 0) throw new ArgumentException("The prompt is empty; give at least one token (e.g. BOS).");
        if (maxNewTokens < 0) throw new ArgumentException("maxNewTokens must be >= 0.");
        using var noGrad = no_grad();
        using var cache = new KvCache(model.Config, 1, prompt.Count + maxNewTokens, model.Device, model.DType);
        var output = new List<int>(maxNewTokens);
        using var promptIds = tensor(prompt.Select(t => (long)t).ToArray()).unsqueeze(0);   // [1, p]
        int next = NextToken(model, promptIds, cache);
        while (output.Count < maxNewTokens)
        {
            cancel.ThrowIfCancellationRequested();
            output.Add(next);
            if (next == eosId || output.Count == maxNewTokens) break;
            using var step = tensor(new long[] { next }).unsqueeze(0);                          // [1, 1]
            next = NextToken(model, step, cache);
        }
        return output.ToArray();
    }

    private static int NextToken(LlamaForCausalLM model, Tensor ids, KvCache cache)
    {
        using var scope = NewDisposeScope();
        var hidden = model.Hidden(ids, cache);                                               // [1, t, d]
        var logits = model.Logits(hidden.narrow(1, hidden.shape[1] - 1, 1));                 // [1, 1, vocab]
        return (int)logits.argmax(-1).item<long>();
    }
}
