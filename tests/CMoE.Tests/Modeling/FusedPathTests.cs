using CMoE.Modeling;
using CMoE.Modeling.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Tests.Modeling;

/// <summary>The fused inference paths (eval mode) against the per-projection reference (training mode).</summary>
public class FusedPathTests
{
    [Fact]
    public void EvalForwardWithCacheEqualsTrainingModeForward()
    {
        TorchTestSetup.Pin();
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        using var model = CheckpointLoader.Load(TestPaths.EmbeddedModel);
        var ids = randint(0, model.Config.VocabSize, [2, 12], dtype: ScalarType.Int64, generator: new TorchSharp.torch.Generator(3));
        model.train();                                             // reference: every projection on its own
        var reference = model.Forward(ids);                        // [2, 12, vocab]
        model.eval();                                              // fused q|k|v, gate|up, rotary on q|k
        using var cache = new KvCache(model.Config, 2, 12, model.Device, model.DType);
        var prefill = model.Forward(ids.narrow(1, 0, 8), cache);
        var steps = Enumerable.Range(8, 4).Select(i => model.Forward(ids.narrow(1, i, 1), cache)).ToArray();
        var fused = cat([prefill, .. steps], 1);
        (fused - reference).abs().max().item<float>().Should().BeLessThan(1e-4f);
        var scaleOfLogits = reference.abs().max().item<float>();
        ((fused - reference).abs().max().item<float>() / scaleOfLogits).Should().BeLessThan(1e-5f);
    }
}
