using BenchmarkDotNet.Attributes;
using CMoE.Modeling;
using CMoE.Modeling.MoE;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Benchmarks;

/// <summary>
/// One FFN layer of TinyLlama-1.1B's shape (d = 2048, d_h = 5632), dense SwiGLU vs carved MoE at several
/// layouts, for a decode step (1 token) and a prefill (512 tokens). Weights are random and the partition is
/// a random one with evenly spread routing; what is measured is the kernel cost, not quality.
/// </summary>
[MemoryDiagnoser(false)]
public class FfnKernels
{
    private SwiGluMlp _dense = null!;
    private MoeBlock _moe = null!;
    private Tensor[] _decodeInputs = null!;
    private Tensor _prefillInput = null!;
    private int _next;

    /// <summary>Layout of the carved FFN.</summary>
    [Params("S2A2E16", "S3A3E8", "S1A1E8")]
    public string Layout { get; set; } = "S2A2E16";

    /// <summary>Model width.</summary>
    public int Hidden { get; set; } = 2048;

    /// <summary>Dense FFN width.</summary>
    public int Intermediate { get; set; } = 5632;

    /// <summary>Builds the dense block and its carved twin, and the inputs.</summary>
    [GlobalSetup]
    public void Setup()
    {
        torch.set_num_threads(1);
        (_dense, _moe) = Kernels.Build(Hidden, Intermediate, Carving.MoeLayout.Parse(Layout), seed: 0);
        using var gen = new Generator(1);
        _decodeInputs = Enumerable.Range(0, 64).Select(_ => randn([1, 1, Hidden], generator: gen)).ToArray();
        _prefillInput = randn([1, 512, Hidden], generator: gen);
    }

    /// <summary>Frees the tensors.</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        _dense.Dispose();
        _moe.Dispose();
        foreach (var t in _decodeInputs) t.Dispose();
        _prefillInput.Dispose();
    }

    private Tensor NextToken() => _decodeInputs[_next++ & 63];

    /// <summary>Dense FFN, one token.</summary>
    [Benchmark(Baseline = true), BenchmarkCategory("decode")]
    public void DenseDecode()
    {
        using var y = _dense.forward(NextToken());
    }

    /// <summary>Carved FFN (inference fast path), one token.</summary>
    [Benchmark, BenchmarkCategory("decode")]
    public void MoeDecode()
    {
        using var y = _moe.forward(NextToken());
    }

    /// <summary>Carved FFN through the grouped reference path, one token.</summary>
    [Benchmark, BenchmarkCategory("decode")]
    public void MoeDecodeGrouped()
    {
        using var x = NextToken().view(1, Hidden);
        using var y = _moe.GroupedForward(x, _moe.ActiveExperts);
    }

    /// <summary>Dense FFN, 512 tokens.</summary>
    [Benchmark, BenchmarkCategory("prefill")]
    public void DensePrefill()
    {
        using var y = _dense.forward(_prefillInput);
    }

    /// <summary>Carved FFN, 512 tokens (grouped path).</summary>
    [Benchmark, BenchmarkCategory("prefill")]
    public void MoePrefill()
    {
        using var y = _moe.forward(_prefillInput);
    }
}
