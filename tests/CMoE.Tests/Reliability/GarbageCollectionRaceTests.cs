using CMoE.Carving;
using CMoE.Modeling;
using CMoE.Modeling.IO;
using static TorchSharp.torch;

namespace CMoE.Tests.Reliability;

/// <summary>
/// Forward passes (prefill and decode) from several threads while another thread forces garbage collections and
/// finalizers must give the single-thread result without errors. Background: TorchSharp frees temporary scalars (e.g. the
/// implicit alpha = 1 of an addition) in their finalizers and does not keep them alive during the native call, so a
/// collection in between made libtorch read freed memory ("Expected false to be true" from Scalar::toFloat) once in the
/// 8-thread scoring test, and "Unknown scalar type" from result_type once RMSNorm's <c>square()</c> (a hidden pow(2)) raced;
/// no code in src/ passes a temporary scalar any more (build-time ban, src/BannedSymbols.txt). The race is rare per operation
/// (4 in 160,000 implicit-scalar additions under this kind of GC pressure in a throw-away harness, 0 with a long-lived
/// scalar), so this stress test catches a regression only sometimes; it runs in parallel with the other test classes, so
/// its forced collections also stress them.
/// </summary>
public class GarbageCollectionRaceTests
{
    [Fact]
    public void ForwardPassesSurviveCollectionsOnAnotherThread()
    {
        TorchTestSetup.Pin();
        using var model = ModelFolder.Load(TestPaths.EmbeddedModel);
        using (var calibration = randint(0, model.Config.VocabSize, [2, 32], dtype: ScalarType.Int64, generator: new TorchSharp.torch.Generator(1)))
            MoeCarver.Carve(model, calibration, new CarveOptions { Layout = MoeLayout.Parse("S2A2E16") });
        model.eval();
        using var ids = randint(0, model.Config.VocabSize, [1, 12], dtype: ScalarType.Int64, generator: new TorchSharp.torch.Generator(2));
        float expected;
        using (no_grad()) using (var logits = model.Forward(ids)) expected = logits.sum().item<float>();

        var errors = new System.Collections.Concurrent.ConcurrentBag<string>();
        bool stop = false;
        var collector = new Thread(() =>
        {
            while (!Volatile.Read(ref stop))
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
        });
        collector.Start();
        var workers = Enumerable.Range(0, 4).Select(w => new Thread(() =>
        {
            try
            {
                using var noGrad = no_grad();
                for (int i = 0; i < 60; i++)
                {
                    using var scope = NewDisposeScope();
                    float sum = model.Forward(ids).sum().item<float>();                  // prefill: grouped MoE, tensor attention
                    if (Math.Abs(sum - expected) > 1e-3 * Math.Abs(expected)) errors.Add($"worker {w}: logits sum {sum}, expected {expected}");
                    using var cache = new KvCache(model.Config, 1, 3, model.Device, model.DType);
                    for (int t = 0; t < 3; t++) model.Forward(ids.narrow(1, t, 1), cache);  // decode kernels
                }
            }
            catch (Exception e)
            {
                errors.Add($"worker {w}: {e.Message}");
            }
        })).ToList();
        workers.ForEach(t => t.Start());
        workers.ForEach(t => t.Join());
        Volatile.Write(ref stop, true);
        collector.Join();
        errors.Should().BeEmpty();
    }
}
