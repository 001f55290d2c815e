using System.Diagnostics;
using CMoE.Modeling;
using CMoE.Modeling.MoE;
using static TorchSharp.torch;

namespace CMoE.Cli.Bench;

/// <summary>What one <see cref="InferenceBench"/> run measures.</summary>
/// <param name="PromptTokens">Prompt length P per sequence.</param>
/// <param name="DecodeTokens">Greedy decode steps D after the prompt.</param>
/// <param name="Batch">Sequences per run.</param>
/// <param name="Repeats">Timed repetitions (dense and carved interleaved; medians reported).</param>
/// <param name="FfnLayer">Layer whose FFN is timed alone.</param>
/// <param name="FfnDecodeTokens">Single-token FFN calls per FFN decode measurement.</param>
/// <param name="Seed">Seed of the random prompt.</param>
internal sealed record BenchSettings(int PromptTokens, int DecodeTokens, int Batch, int Repeats, int FfnLayer, int FfnDecodeTokens, int Seed);

/// <summary>Medians of one model's figures.</summary>
internal sealed record ModelSpeed(double PrefillTokensPerSecond, double DecodeTokensPerSecond,
    double FfnDecodeMicrosPerToken, double FfnPrefillMicrosPerToken, double DecodeMillisPerToken, double FfnDecodeEveryExpertMicrosPerToken);

/// <summary>
/// Dense vs carved inference speed: prefill and greedy decode with the KV cache, end to end, and one
/// layer's FFN alone on that layer's real FFN inputs (single-token calls for decode, the whole prompt for
/// prefill). Repetitions alternate which model goes first, so load from other processes hits both
/// alike; every figure is the median over repetitions, after one untimed warm-up.
/// </summary>
internal static class InferenceBench
{
    /// <summary>Runs the measurements; <paramref name="progress"/> receives one line per finished repetition.</summary>
    public static (ModelSpeed Dense, ModelSpeed Carved) Run(LlamaForCausalLM dense, LlamaForCausalLM carved, BenchSettings s,
        Action<string>? progress = null, CancellationToken cancel = default)
    {
        using var noGrad = no_grad();
        dense.eval();
        carved.eval();
        using var gen = new TorchSharp.torch.Generator((ulong)s.Seed);
        using var prompt = randint(0, dense.Config.VocabSize, [s.Batch, s.PromptTokens], dtype: ScalarType.Int64, generator: gen).to(dense.Device); // [b, P]
        using var ffnInput = CaptureFfnInput(dense, prompt, s.FfnLayer);                 // [b, P, d]
        var denseFfn = dense.Model.Layers[s.FfnLayer].Mlp;
        var carvedFfn = carved.Model.Layers[s.FfnLayer].Mlp;
        var samples = new Dictionary<string, List<double>>();
        void Add(string key, double v)
        {
            if (!samples.TryGetValue(key, out var list)) samples[key] = list = [];
            list.Add(v);
        }

        for (int r = -1; r < s.Repeats; r++)   // r = -1: warm-up, not recorded
        {
            cancel.ThrowIfCancellationRequested();
            var order = r % 2 == 0 ? new[] { ("dense", dense, denseFfn), ("carved", carved, carvedFfn) } : [("carved", carved, carvedFfn), ("dense", dense, denseFfn)];
            foreach (var (name, model, ffn) in order)
            {
                var (prefill, decode) = Generate(model, prompt, r < 0 ? Math.Min(4, s.DecodeTokens) : s.DecodeTokens);
                double ffnDecode = TimeFfnDecode(ffn, ffnInput, s.FfnDecodeTokens);
                double ffnPrefill = TimeFfnPrefill(ffn, ffnInput);
                double everyExpert = ffn is MoeBlock block ? TimeEveryExpertDecode(block, ffnInput, s.FfnDecodeTokens) : double.NaN;
                if (r < 0) continue;
                Add(name + ".ffn_decode_every_expert", everyExpert);
                Add(name + ".prefill", prefill);
                Add(name + ".decode", decode);
                Add(name + ".ffn_decode", ffnDecode);
                Add(name + ".ffn_prefill", ffnPrefill);
            }
            if (r >= 0) progress?.Invoke($"repetition {r + 1}/{s.Repeats}: decode ms/token dense {1e3 * samples["dense.decode"][^1] / s.DecodeTokens:F2}, carved {1e3 * samples["carved.decode"][^1] / s.DecodeTokens:F2}");
        }
        ModelSpeed Speed(string name) => new(
            PrefillTokensPerSecond: s.Batch * s.PromptTokens / Median(samples[name + ".prefill"]),
            DecodeTokensPerSecond: s.Batch * s.DecodeTokens / Median(samples[name + ".decode"]),
            FfnDecodeMicrosPerToken: 1e6 * Median(samples[name + ".ffn_decode"]) / (s.Batch * Math.Min(s.FfnDecodeTokens, s.PromptTokens)),
            FfnPrefillMicrosPerToken: 1e6 * Median(samples[name + ".ffn_prefill"]) / (s.Batch * s.PromptTokens),
            DecodeMillisPerToken: 1e3 * Median(samples[name + ".decode"]) / s.DecodeTokens,
            FfnDecodeEveryExpertMicrosPerToken: 1e6 * Median(samples[name + ".ffn_decode_every_expert"]) / (s.Batch * Math.Min(s.FfnDecodeTokens, s.PromptTokens)));
        return (Speed("dense"), Speed("carved"));
    }

    /// <summary>max / mean tokens per routed expert of <paramref name="block"/> on the FFN inputs of its layer (1 = perfectly balanced).</summary>
    public static double LoadImbalance(LlamaForCausalLM carved, int layer, int batch, int promptTokens, int seed)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        if (carved.Model.Layers[layer].Mlp is not MoeBlock block) return double.NaN;
        using var gen = new TorchSharp.torch.Generator((ulong)seed);
        var prompt = randint(0, carved.Config.VocabSize, [batch, promptTokens], dtype: ScalarType.Int64, generator: gen).to(carved.Device);
        var x = CaptureFfnInput(carved, prompt, layer).reshape(-1, carved.Config.HiddenSize);   // [n, d]
        var (selected, _, _) = block.Router.Route(x, block.ActiveExperts, block.RouterThreshold);   // [n, a] (-1: unused slot of dynamic-K)
        var used = selected.flatten();
        var counts = used.masked_select(used.ge(Scalars.Of(0L))).bincount(null, minlength: block.Shape.RoutedExperts).to(ScalarType.Float64);
        return counts.max().item<double>() / counts.mean().item<double>();
    }

    /// <summary>The FFN input RMSNorm(h) of <paramref name="layer"/> for the prompt: [b, P] -> [b, P, d].</summary>
    private static Tensor CaptureFfnInput(LlamaForCausalLM model, Tensor prompt, int layer)
    {
        using var scope = NewDisposeScope();
        var (cos, sin) = model.Rotary(0, prompt.shape[1]);
        var x = model.Model.Embeddings.forward(prompt);                                       // [b, P, d]
        for (int i = 0; i < layer; i++) x = model.Model.Layers[i].Forward(x, cos, sin, null, i);
        var h = model.Model.Layers[layer].AttentionResidual(x, cos, sin, null, layer);
        return model.Model.Layers[layer].FfnInput(h).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Prefill (prompt through the model, logits of the last position) then D greedy steps with the KV cache; seconds of each.
    /// <paramref name="tokens"/>, when given, receives the greedy ids of the first sequence (the prefill's, then each step's but the last).
    /// </summary>
    internal static (double Prefill, double Decode) Generate(LlamaForCausalLM model, Tensor prompt, int decodeTokens, List<long>? tokens = null)
    {
        long b = prompt.shape[0], p = prompt.shape[1];
        using var cache = new KvCache(model.Config, b, p + decodeTokens, model.Device, model.DType);
        long t0 = Stopwatch.GetTimestamp();
        Tensor next;
        using (var scope = NewDisposeScope())
        {
            var hidden = model.Hidden(prompt, cache);                                          // [b, P, d]
            next = model.Logits(hidden.narrow(1, p - 1, 1)).argmax(-1).MoveToOuterDisposeScope(); // [b, 1]
        }
        Sync(next);
        double prefill = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        long t1 = Stopwatch.GetTimestamp();
        for (int i = 0; i < decodeTokens; i++)
        {
            using var scope = NewDisposeScope();
            tokens?.Add(next[0, 0].item<long>());
            var step = model.Forward(next, cache).argmax(-1);                                  // [b, 1]
            next.Dispose();
            next = step.MoveToOuterDisposeScope();
        }
        Sync(next);
        double decode = Stopwatch.GetElapsedTime(t1).TotalSeconds;
        next.Dispose();
        return (prefill, decode);
    }

    /// <summary>Seconds for single-token FFN calls over the first <paramref name="tokens"/> positions.</summary>
    private static double TimeFfnDecode(nn.Module<Tensor, Tensor> ffn, Tensor x, int tokens)
    {
        int n = (int)Math.Min(tokens, x.shape[1]);
        var steps = Enumerable.Range(0, n).Select(i => x.narrow(1, i, 1)).ToArray();           // [b, 1, d] views
        long t0 = Stopwatch.GetTimestamp();
        Tensor? last = null;
        foreach (var xt in steps)
        {
            last?.Dispose();
            last = ffn.forward(xt);
        }
        Sync(last!);
        double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        last!.Dispose();
        foreach (var v in steps) v.Dispose();
        return seconds;
    }

    /// <summary>
    /// Kernel parity: the carved FFN's single-token calls with every routed expert active, i.e. the whole dense FFN's
    /// work through the carved decode path. Close to the dense FFN's time means the carved speed-up comes from the
    /// experts it skips, not from a faster kernel.
    /// </summary>
    private static double TimeEveryExpertDecode(MoeBlock block, Tensor x, int tokens)
    {
        int active = block.ActiveExperts;
        block.ActiveExperts = block.Shape.RoutedExperts;
        try { return TimeFfnDecode(block, x, tokens); }
        finally { block.ActiveExperts = active; }
    }

    /// <summary>Seconds for one FFN call on the whole prompt.</summary>
    private static double TimeFfnPrefill(nn.Module<Tensor, Tensor> ffn, Tensor x)
    {
        long t0 = Stopwatch.GetTimestamp();
        using var y = ffn.forward(x);                                                          // [b, P, d]
        Sync(y);
        return Stopwatch.GetElapsedTime(t0).TotalSeconds;
    }

    private static void Sync(Tensor t)
    {
        if (t.device_type == TorchSharp.DeviceType.CUDA) cuda.synchronize();
    }

    private static double Median(List<double> values)
    {
        var sorted = values.OrderBy(v => v).ToArray();
        int mid = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }
}
