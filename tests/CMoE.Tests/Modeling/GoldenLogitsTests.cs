using CMoE.Modeling;
using CMoE.Modeling.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Tests.Modeling;

/// <summary>The dense forward pass against Hugging Face transformers' fp32 outputs on tinyref-llama.</summary>
public class GoldenLogitsTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [SharedFact]
    public void DenseForwardMatchesHuggingFaceGoldens()
    {
        TorchTestSetup.Pin();
        using var model = CheckpointLoader.Load(TestPaths.InShared("models", "tinyref-llama"));
        using var golden = SafeTensorsFile.Open(TestPaths.InShared("models", "tinyref-llama", "golden_logits.safetensors"));
        using var ids = golden.Load("input_ids");                       // [4, 128]
        using var expectedLogits = golden.Load("logits_first2x32");     // [2, 32, vocab]
        using var expectedNll = golden.Load("token_nll");               // [4, 127]
        using var expectedArgmax = golden.Load("argmax");               // [4, 128]

        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var logits = model.Forward(ids);                                // [4, 128, vocab]
        var maxAbs = (logits.narrow(0, 0, 2).narrow(1, 0, 32) - expectedLogits).abs().max().item<float>();
        var logProbs = logits.narrow(1, 0, 127).log_softmax(-1);
        var nll = -logProbs.gather(-1, ids.narrow(1, 1, 127).unsqueeze(-1)).squeeze(-1);
        var nllMeanAbs = (nll - expectedNll).abs().mean().item<float>();
        var argmaxAgreement = logits.argmax(-1).eq(expectedArgmax).to(ScalarType.Float32).mean().item<float>();

        output.WriteLine($"max |logit diff| {maxAbs:E3}; mean |NLL diff| {nllMeanAbs:E3}; argmax agreement {argmaxAgreement:P2}");
        maxAbs.Should().BeLessThan(1e-3f, "fp32 logits must match Hugging Face within 1e-3 (max abs)");
        nllMeanAbs.Should().BeLessThan(1e-4f, "per-token NLL must match within 1e-4 (mean abs)");
        argmaxAgreement.Should().BeGreaterThanOrEqualTo(0.995f);
    }

    [Fact]
    public void EmbeddedModelLoadsWithExpectedShape()
    {
        TorchTestSetup.Pin();
        using var model = CheckpointLoader.Load(TestPaths.EmbeddedModel);
        model.Config.HiddenSize.Should().Be(384);
        model.Config.NumKeyValueHeads.Should().Be(2);
        model.parameters().Sum(p => p.NumberOfElements).Should().Be(18_880_896);
    }
}
