using CMoE.Carving;
using CMoE.Cli.Bench;
using CMoE.Modeling.MoE;
using static TorchSharp.torch;

namespace CMoE.Tests.Bench;

public class InferenceBenchTests
{
    [Fact]
    public void SyntheticTinyLlamaShapeIsTinyLlamasLayer()
    {
        var c = SyntheticModels.Get("tinyllama-4l");
        (c.HiddenSize, c.IntermediateSize, c.NumHeads, c.NumKeyValueHeads, c.HeadDim, c.NumLayers, c.VocabSize)
            .Should().Be((2048, 5632, 32, 4, 64, 4, 8192));
    }

    [Fact]
    public void MicroRunReportsPositiveFiguresForBothModels()
    {
        TorchTestSetup.Pin();
        var config = SyntheticModels.Get("micro");
        using var dense = SyntheticModels.Random(config, seed: 0);
        using var carved = SyntheticModels.Random(config, seed: 0);
        using (var calibration = randint(0, config.VocabSize, [2, 16], dtype: ScalarType.Int64))
            MoeCarver.Carve(carved, calibration, new CarveOptions { Layout = MoeLayout.Parse("S2A2E16") });
        carved.Model.Layers[0].Mlp.Should().BeOfType<MoeBlock>();

        var (d, c) = InferenceBench.Run(dense, carved, new BenchSettings(PromptTokens: 8, DecodeTokens: 2, Batch: 2, Repeats: 1, FfnLayer: 1, FfnDecodeTokens: 4, Seed: 0));

        foreach (var s in new[] { d, c })
        {
            s.PrefillTokensPerSecond.Should().BePositive();
            s.DecodeTokensPerSecond.Should().BePositive();
            s.FfnDecodeMicrosPerToken.Should().BePositive();
            s.FfnPrefillMicrosPerToken.Should().BePositive();
        }
    }

    [Fact]
    public void CarvedModelDecodesTheSameTokensInEvalAndTrainingMode()
    {
        // The decode fast path (eval) and the grouped path (training mode) give the same greedy tokens.
        TorchTestSetup.Pin();
        var config = SyntheticModels.Get("micro");
        using var carved = SyntheticModels.Random(config, seed: 3);
        using (var calibration = randint(0, config.VocabSize, [2, 16], dtype: ScalarType.Int64))
            MoeCarver.Carve(carved, calibration, new CarveOptions { Layout = MoeLayout.Parse("S1A2E8") });
        using var noGrad = no_grad();
        using var prompt = randint(0, config.VocabSize, [1, 6], dtype: ScalarType.Int64);
        float[] Logits(bool training)
        {
            carved.train(training);
            using var cache = new CMoE.Modeling.KvCache(config, 1, 10, CPU, ScalarType.Float32);
            using var first = carved.Forward(prompt, cache);
            using var next = first.narrow(1, 5, 1).argmax(-1);
            using var step = carved.Forward(next, cache);       // one token: fast path in eval mode
            return step.flatten().data<float>().ToArray();
        }
        var eval = Logits(false);
        var train = Logits(true);
        eval.Zip(train, (a, b) => Math.Abs(a - b)).Max().Should().BeLessThan(1e-4f);
    }
}

public class MoeDecodeWithCacheTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void IncrementalDecodeEqualsFullForward(bool carve)
    {
        // Covers the GQA decode step of the attention (query heads grouped per KV head) and the MoE fast path.
        TorchTestSetup.Pin();
        var config = SyntheticModels.Get("micro");
        using var model = SyntheticModels.Random(config, seed: 5);
        if (carve)
            using (var calibration = randint(0, config.VocabSize, [2, 16], dtype: ScalarType.Int64))
                MoeCarver.Carve(model, calibration, new CarveOptions { Layout = MoeLayout.Parse("S2A2E16") });
        model.eval();
        using var noGrad = no_grad();
        using var ids = randint(0, config.VocabSize, [2, 7], dtype: ScalarType.Int64);
        using var full = model.Forward(ids);                                                  // [2, 7, V]
        using var cache = new CMoE.Modeling.KvCache(config, 2, 8, CPU, ScalarType.Float32);
        using var prefix = model.Forward(ids.narrow(1, 0, 5), cache);
        using var step5 = model.Forward(ids.narrow(1, 5, 1), cache);                          // [2, 1, V]
        using var step6 = model.Forward(ids.narrow(1, 6, 1), cache);
        (step5 - full.narrow(1, 5, 1)).abs().max().item<float>().Should().BeLessThan(1e-4f);
        (step6 - full.narrow(1, 6, 1)).abs().max().item<float>().Should().BeLessThan(1e-4f);
    }
}
