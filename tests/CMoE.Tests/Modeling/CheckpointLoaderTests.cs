using System.Text.Json.Nodes;
using CMoE.Modeling;
using CMoE.Modeling.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Tests.Modeling;

public class CheckpointLoaderTests
{
    private static readonly long[] Prompt = [1, 5, 9, 13, 2, 7, 30, 41];

    private static Tensor Logits(string folder)
    {
        using var model = CheckpointLoader.Load(folder);
        using var ids = tensor(Prompt).unsqueeze(0);
        using var noGrad = no_grad();
        return model.Forward(ids);
    }

    [Fact]
    public void ShardedAndSingleFileGiveTheSameModel()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        var config = TinyCheckpoint.Config();
        using var single = Logits(TinyCheckpoint.Write(dir["single"], config));
        using var sharded = Logits(TinyCheckpoint.Write(dir["sharded"], config, sharded: true));
        (single - sharded).abs().max().item<float>().Should().Be(0f);
    }

    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]
    public void HalfPrecisionFilesLoadAsTheirFloat32Values(ScalarType fileType)
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        var config = TinyCheckpoint.Config();
        // The fp32 file holds exactly the half-precision values, so both must give identical logits.
        using var half = Logits(TinyCheckpoint.Write(dir["half"], config, fileType));
        using var full = Logits(TinyCheckpoint.Write(dir["full"], config, ScalarType.Float32, edit: (_, t) => t.to(fileType).to(ScalarType.Float32)));
        (half - full).abs().max().item<float>().Should().Be(0f);
    }

    [Fact]
    public void RopeThetaIsReadFromBothPlaces()
    {
        var old = TinyCheckpoint.Config();
        old["rope_theta"] = 500000.0;
        var neu = TinyCheckpoint.Config();
        neu.Remove("rope_theta");
        neu["rope_parameters"] = new JsonObject { ["rope_theta"] = 500000.0, ["rope_type"] = "default" };
        LlamaConfig.Parse(old).RopeTheta.Should().Be(500000);
        LlamaConfig.Parse(neu).RopeTheta.Should().Be(500000);
        var different = TinyCheckpoint.Config();
        different["rope_theta"] = 10000.0;
        LlamaConfig.Parse(different).RopeTheta.Should().Be(10000);
    }

    [Fact]
    public void Qwen2LoadsItsQkvBiasesAndTheyMatter()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        var config = TinyCheckpoint.Config("Qwen2ForCausalLM");
        LlamaConfig.Parse(config).QkvBias.Should().BeTrue();
        string withBias = TinyCheckpoint.Write(dir["bias"], config);
        string zeroBias = TinyCheckpoint.Write(dir["zero"], config, edit: (name, t) => name.EndsWith(".bias") ? zeros_like(t) : null);
        using var model = CheckpointLoader.Load(withBias);
        model.state_dict().Keys.Should().Contain("model.layers.0.self_attn.q_proj.bias");
        model.state_dict().Keys.Should().NotContain("model.layers.0.self_attn.o_proj.bias");
        using var a = Logits(withBias);
        using var b = Logits(zeroBias);
        (a - b).abs().max().item<float>().Should().BeGreaterThan(1e-3f);
    }

    [Fact]
    public void MistralAndTiedEmbeddingsLoad()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        var config = TinyCheckpoint.Config("MistralForCausalLM");
        config["tie_word_embeddings"] = true;
        using var model = CheckpointLoader.Load(TinyCheckpoint.Write(dir.Path, config));
        model.state_dict().Keys.Should().NotContain("lm_head.weight");
        using var ids = tensor(Prompt).unsqueeze(0);
        using var noGrad = no_grad();
        using var logits = model.Forward(ids);
        using var hidden = model.Hidden(ids);
        using var manual = hidden.matmul(model.Model.Embeddings.Weight.t());
        (logits - manual).abs().max().item<float>().Should().BeLessThan(1e-5f);
    }

    [Fact]
    public void IncrementalDecodingWithTheKvCacheEqualsTheFullForwardPass()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        using var model = CheckpointLoader.Load(TinyCheckpoint.Write(dir.Path, TinyCheckpoint.Config()));
        using var noGrad = no_grad();
        using var ids = tensor(Prompt).unsqueeze(0);                       // [1, 8]
        using var full = model.Forward(ids);                               // [1, 8, vocab]
        using var cache = new KvCache(model.Config, 1, 16, model.Device, model.DType);
        using var prefill = model.Forward(ids.narrow(1, 0, 5), cache);     // positions 0..4 at once
        (prefill - full.narrow(1, 0, 5)).abs().max().item<float>().Should().BeLessThan(1e-5f);
        for (int t = 5; t < 8; t++)
        {
            using var step = model.Forward(ids.narrow(1, t, 1), cache);   // one position at a time
            (step[0, 0] - full[0, t]).abs().max().item<float>().Should().BeLessThan(1e-5f);
        }
        cache.Length.Should().Be(8);
    }

    [Fact]
    public void GreedyGenerationMatchesRecomputingWithoutCache()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        using var model = CheckpointLoader.Load(TinyCheckpoint.Write(dir.Path, TinyCheckpoint.Config(), seed: 3));
        var generated = GreedyGenerator.Generate(model, Prompt.Select(t => (int)t).ToArray(), 6);
        generated.Should().HaveCount(6);
        var sequence = Prompt.ToList();
        using var noGrad = no_grad();
        foreach (var token in generated)
        {
            using var ids = tensor(sequence.ToArray()).unsqueeze(0);
            using var logits = model.Forward(ids);
            logits[0, -1].argmax().item<long>().Should().Be(token);
            sequence.Add(token);
        }
    }
}
