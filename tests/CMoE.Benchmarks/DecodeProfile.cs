using System.Diagnostics;
using CMoE.Modeling;
using CMoE.Modeling.IO;
using CMoE.Modeling.Weights;
using static TorchSharp.torch;

namespace CMoE.Benchmarks;

/// <summary>
/// <c>CMoE.Benchmarks decode-profile [model-folder] [format] [threads]</c>: where a decode step of a model goes — the whole step
/// (hidden states, lm_head) after a 512-token prompt, and one layer's modules called alone (RMSNorm, attention at position 600,
/// FFN) — as microseconds, minimum over repetitions (the least disturbed on a shared machine).
/// </summary>
internal static class DecodeProfile
{
    public static void Run(string folder, string format, int threads)
    {
        CMoE.Modeling.Backend.TorchRuntime.SetThreads(threads);
        var fmt = WeightFormat.Parse(format);
        using var model = ModelFolder.Load(folder, fmt);
        using var noGrad = no_grad();
        using var ids = randint(0, model.Config.VocabSize, [1, 512], dtype: ScalarType.Int64);
        double bestStep = double.MaxValue, bestHidden = double.MaxValue, bestLogits = double.MaxValue;
        for (int rep = 0; rep < 5; rep++)
        {
            using var cache = new KvCache(model.Config, 1, 700, model.Device, model.DType);
            using (var h = model.Hidden(ids, cache)) { }
            using var next = tensor(new long[] { 5 }).view(1, 1);
            for (int i = 0; i < 128; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                using var h = model.Hidden(next, cache);
                long t1 = Stopwatch.GetTimestamp();
                using var l = model.Logits(h);
                long t2 = Stopwatch.GetTimestamp();
                bestHidden = Math.Min(bestHidden, Stopwatch.GetElapsedTime(t0, t1).TotalMicroseconds);
                bestLogits = Math.Min(bestLogits, Stopwatch.GetElapsedTime(t1, t2).TotalMicroseconds);
                bestStep = Math.Min(bestStep, Stopwatch.GetElapsedTime(t0, t2).TotalMicroseconds);
            }
        }
        Console.WriteLine($"{folder}, {fmt} weights, {threads} thread(s), CPU {Machine.CpuName()}");
        Console.WriteLine($"decode step (positions 512-640, min): {bestStep:F1} us = hidden {bestHidden:F1} + logits {bestLogits:F1}");
        var layer = model.Model.Layers[0];
        using var x = randn(1, 1, model.Config.HiddenSize);
        double Time(Action a, int n = 400)
        {
            a();
            double best = double.MaxValue;
            for (int r = 0; r < 5; r++)
            {
                var s = Stopwatch.StartNew();
                for (int i = 0; i < n; i++) a();
                best = Math.Min(best, s.Elapsed.TotalMicroseconds / n);
            }
            return best;
        }
        using var cache2 = new KvCache(model.Config, 1, 2000, model.Device, model.DType);
        cache2.Length = 600;
        var (cos, sin) = model.Rotary(600, 1);
        Console.WriteLine($"layer 0 alone: RMSNorm {Time(() => { using var y = layer.InputNorm.forward(x); }):F1} us, " +
                          $"attention at position 600 {Time(() => { using var y = layer.Attention.Forward(x, cos, sin, cache2, 0); }):F1} us, " +
                          $"FFN {Time(() => { using var y = layer.Mlp.forward(x); }):F1} us; x {model.Config.NumLayers} layers");
    }
}
