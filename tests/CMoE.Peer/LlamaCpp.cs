using System.Diagnostics;
using System.Runtime.InteropServices;
using LLama;
using LLama.Common;
using LLama.Native;

namespace CMoE.Peer;

/// <summary>
/// llama.cpp (through LLamaSharp) on a GGUF file: prefill and greedy decode timed the way our InferenceBench times ours
/// (prompt in one batch, logits of the last position, argmax; then one token per decode call), and perplexity on given ids.
/// Token ids are fed through the batch API as they are: llama.cpp's tokenizer is never used.
/// </summary>
internal sealed class LlamaCpp : IDisposable
{
    private static bool _configured;
    private readonly LLamaWeights _weights;
    private readonly LLamaContext _context;
    private readonly LLamaBatch _batch = new();
    private readonly int _vocab;

    /// <summary>Settings a context was made with, for the report.</summary>
    public string Settings { get; }

    private LlamaCpp(string gguf, int threads, int contextSize, bool exact)
    {
        Configure();
        var p = new ModelParams(gguf)
        {
            ContextSize = (uint)contextSize,
            BatchSize = 512,
            UBatchSize = 512,
            Threads = threads,
            BatchThreads = threads,
            GpuLayerCount = 0,
        };
        if (exact)
        {
            // The oracle mode: an f16 KV cache shifts perplexity by a few 1e-6 (../shared/docs/platform-notes.md).
            p.FlashAttention = false;
            p.TypeK = GGMLType.GGML_TYPE_F32;
            p.TypeV = GGMLType.GGML_TYPE_F32;
        }
        _weights = LLamaWeights.LoadFromFile(p);
        _context = _weights.CreateContext(p);
        _vocab = _context.Vocab.Count;
        var native = LLamaContextParams.Default();
        Settings = $"context {_context.ContextSize}, batch/ubatch {_context.BatchSize}/{_context.NativeHandle.UBatchSize}, " +
                   $"threads {_context.GenerationThreads}/{_context.BatchThreads} (generation/batch), " +
                   $"flash attention {(p.FlashAttention is null ? $"default ({native.llama_flash_attn_type})" : p.FlashAttention.ToString())}, " +
                   $"KV cache {(p.TypeK is null ? $"default ({native.type_k}/{native.type_v})" : $"{p.TypeK}/{p.TypeV}")}";
    }

    /// <summary>The benchmark context: context 1024, batch/ubatch 512, llama.cpp's default flash attention and KV cache.</summary>
    public static LlamaCpp ForSpeed(string gguf, int threads) => new(gguf, threads, 1024, exact: false);

    /// <summary>The oracle context: F32 KV cache, no flash attention, one window per context fill.</summary>
    public static LlamaCpp ForPerplexity(string gguf, int threads, int window) => new(gguf, threads, Math.Max(window, 512), exact: true);

    /// <summary>Sends llama.cpp's log to nowhere but errors (it prints every tensor at load); must run before any other LLamaSharp call.</summary>
    public static void Configure()
    {
        if (_configured) return;
        NativeLibraryConfig.All.WithLogCallback((level, message) => { if (level == LLamaLogLevel.Error) Console.Error.Write("llama.cpp: " + message); });
        _configured = true;
    }

    /// <summary>Prefill then greedy decode on an emptied cache; seconds of each. <paramref name="tokens"/> receives the greedy ids as our Generate does.</summary>
    public (double Prefill, double Decode) Generate(int[] prompt, int decodeTokens, List<long>? tokens = null)
    {
        _context.NativeHandle.MemoryClear(true);
        long t0 = Stopwatch.GetTimestamp();
        _batch.Clear();
        for (int i = 0; i < prompt.Length; i++) _batch.Add(prompt[i], i, LLamaSeqId.Zero, i == prompt.Length - 1);
        Check(_context.NativeHandle.Decode(_batch));
        int next = ArgMax(_context.NativeHandle.GetLogitsIth(prompt.Length - 1));
        double prefill = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        long t1 = Stopwatch.GetTimestamp();
        for (int i = 0; i < decodeTokens; i++)
        {
            tokens?.Add(next);
            _batch.Clear();
            _batch.Add(next, prompt.Length + i, LLamaSeqId.Zero, true);
            Check(_context.NativeHandle.Decode(_batch));
            next = ArgMax(_context.NativeHandle.GetLogitsIth(0));
        }
        double decode = Stopwatch.GetElapsedTime(t1).TotalSeconds;
        return (prefill, decode);
    }

    /// <summary>Sum of the NLL (nats, fp64 log-softmax) of positions 1..n-1 of one window given the earlier ones.</summary>
    public double WindowNll(long[] window)
    {
        _context.NativeHandle.MemoryClear(true);
        double sum = 0;
        for (int start = 0; start < window.Length; start += 512)   // n_batch 512: longer windows go in chunks
        {
            int n = Math.Min(512, window.Length - start);
            _batch.Clear();
            for (int i = 0; i < n; i++) _batch.Add((int)window[start + i], start + i, LLamaSeqId.Zero, true);
            Check(_context.NativeHandle.Decode(_batch));
            for (int i = 0; i < n; i++)
            {
                int pos = start + i;
                if (pos + 1 >= window.Length) break;
                sum += Nll(_context.NativeHandle.GetLogitsIth(i), (int)window[pos + 1]);
            }
        }
        return sum;
    }

    private static double Nll(Span<float> logits, int target)
    {
        double max = double.NegativeInfinity;
        foreach (float v in logits) max = Math.Max(max, v);
        double sum = 0;
        foreach (float v in logits) sum += Math.Exp(v - max);
        return Math.Log(sum) + max - logits[target];
    }

    private int ArgMax(Span<float> logits)
    {
        int best = 0;
        for (int i = 1; i < _vocab; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    private static void Check(DecodeResult r)
    {
        if (r != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode returned {r}");
    }

    /// <summary>The LLamaSharp package version restored (from this program's deps.json: the assembly itself says 0.0.0.0).</summary>
    public static string PackageVersion()
    {
        string deps = Path.Combine(AppContext.BaseDirectory, "CMoE.Peer.deps.json");
        var m = File.Exists(deps) ? System.Text.RegularExpressions.Regex.Match(File.ReadAllText(deps), "\"LLamaSharp/([^\"]+)\"") : null;
        return m is { Success: true } ? m.Groups[1].Value : "unknown";
    }

    /// <summary>llama.cpp's own system line (SIMD features it was built with).</summary>
    public static string SystemInfo()
    {
        try { return Marshal.PtrToStringAnsi(NativeApi.llama_print_system_info())?.Trim() ?? "unknown"; }
        catch (Exception e) when (e is EntryPointNotFoundException or MarshalDirectiveException) { return "unknown"; }
    }

    public void Dispose()
    {
        _context.Dispose();
        _weights.Dispose();
    }
}
