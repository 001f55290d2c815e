using CMoE.Modeling;
using CMoE.Carving;
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

    [Theory]
    [InlineData(4, 4, 40, false)]    // multi-head attention, head_dim 10 (no full vector)
    [InlineData(4, 2, 96, false)]    // GQA groups of 2, head_dim 24
    [InlineData(6, 2, 96, true)]     // GQA groups of 3, carved S1A2E8
    public void ManagedDecodeFromTheFirstTokenEqualsFullForward(int heads, int kvHeads, int hidden, bool carve)
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        var config = TinyCheckpoint.Config();
        config["num_attention_heads"] = heads;
        config["num_key_value_heads"] = kvHeads;
        config["hidden_size"] = hidden;
        config["intermediate_size"] = 128;
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        using var model = CheckpointLoader.Load(TinyCheckpoint.Write(dir["m"], config, seed: heads + hidden));
        var ids = randint(0, model.Config.VocabSize, [1, 9], dtype: ScalarType.Int64, generator: new TorchSharp.torch.Generator(5));
        if (carve)
        {
            MoeCarver.Carve(model, randint(0, model.Config.VocabSize, [8, 16], dtype: ScalarType.Int64, generator: new TorchSharp.torch.Generator(6)),
                new CarveOptions { Layout = MoeLayout.Parse("S1A2E8") });
            model.eval();
        }
        model.train();                                             // reference: tensor paths, whole sequence at once
        var reference = model.Forward(ids);                        // [1, 9, vocab]
        model.eval();
        using var cache = new KvCache(model.Config, 1, 9, model.Device, model.DType);
        var steps = Enumerable.Range(0, 9).Select(i => model.Forward(ids.narrow(1, i, 1), cache)).ToArray();   // token by token from position 0
        var decoded = cat(steps, 1);
        ((decoded - reference).abs().max().item<float>() / reference.abs().max().item<float>()).Should().BeLessThan(1e-5f);
        var overflow = () => model.Forward(ids.narrow(1, 0, 1), cache);
        overflow.Should().Throw<InvalidOperationException>().WithMessage("*KV cache holds 9 positions*larger cache*");
    }
}
