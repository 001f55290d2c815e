using CMoE.Carving;
using CMoE.Cli.Bench;
using CMoE.Evaluation;
using CMoE.Modeling;
using CMoE.Modeling.Families;
using CMoE.Modeling.IO;
using CMoE.Modeling.MoE;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Tests.Modeling;

/// <summary>
/// Each supported family on its tiny random model (<see cref="SyntheticModels.FamilyShapes"/>, written in the family's Hugging Face
/// layout): decode with a KV cache equals the full forward pass, carving and evaluating work, with every expert on the carved model
/// is the dense one, and streaming (disk-to-disk) carving equals carving in memory. The numeric oracle against llama.cpp is
/// <c>dotnet run -c Release --project tests/CMoE.Peer -- families</c> (docs/architecture.md, "Model families").
/// </summary>
public class FamilyTests
{
    public static TheoryData<string> Shapes => new(SyntheticModels.FamilyShapes);

    private static string Write(TempDir dir, string shape, int seed = 3)
    {
        string folder = dir[shape];
        SyntheticModels.WriteFolder(SyntheticModels.Get(shape), folder, seed, TestPaths.EmbeddedModel, spread: true);
        return folder;
    }

    private static Tensor Ids(int length, int seed)
    {
        var g = new Generator((ulong)seed);
        return randint(3, 8192, [1, length], generator: g, dtype: ScalarType.Int64);
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void DecodeLogitsEqualFullForwardLogits(string shape)
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        using var model = ModelFolder.Load(Write(dir, shape));
        using var noGrad = no_grad();
        const int prompt = 70, steps = 6;                                                 // past Gemma-2's window of 64
        using var ids = Ids(prompt + steps, seed: 11);
        using var full = model.Forward(ids);                                              // [1, 76, V]
        using var cache = new KvCache(model.Config, 1, prompt + steps, model.Device, model.DType);
        using (var prefill = model.Forward(ids.narrow(1, 0, prompt), cache))
            (prefill - full.narrow(1, 0, prompt)).abs().max().item<float>().Should().BeLessThan(1e-4f);
        bool managed = model.Model.Layers.All(l => l.Attention.Decodable() is not null && l.PostFfnNorm is null);
        managed.Should().Be(shape is "llama-tiny" or "mistral-tiny" or "qwen3-tiny" or "phi3-tiny",
            "the managed decode step implements q/k norms but not biases, GeGLU, soft-capping or windows (those take the tensor path)");
        for (int t = prompt; t < prompt + steps; t++)
        {
            using var step = model.Forward(ids.narrow(1, t, 1), cache);                   // [1, 1, V]
            float diff = (step - full.narrow(1, t, 1)).abs().max().item<float>();
            diff.Should().BeLessThan(1e-4f, $"decode step at position {t} of {shape}");
        }
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void CarvesEvaluatesAndStreamsLikeInMemory(string shape)
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        string folder = Write(dir, shape);
        var layout = MoeLayout.Parse("S1A2E8");
        var options = new CarveOptions { Layout = layout, KAct = 8 };                         // this library's recipe (down-fit included)
        using var calibration = Ids(96, seed: 5).reshape(2, 48);
        using var dense = ModelFolder.Load(folder);
        using var carved = ModelFolder.Load(folder);
        MoeCarver.Carve(carved, calibration, options);
        carved.Model.Layers.Should().AllSatisfy(l => ((MoeBlock)l.Mlp).Shape.Activation.Should().Be(dense.Config.Activation));

        using var noGrad = no_grad();
        using var probe = Ids(80, seed: 9);
        using var carvedLogits = carved.Forward(probe);
        using (var authors = ModelFolder.Load(folder))
        {
            // The authors' carving only slices the dense FFN: with every routed expert on it is the dense FFN again.
            MoeCarver.Carve(authors, calibration, CarveOptions.Authors(layout) with { KAct = 8 });
            foreach (var layer in authors.Model.Layers) ((MoeBlock)layer.Mlp).ActiveExperts = 7;
            using var all = authors.Forward(probe);
            using var reference = dense.Forward(probe);
            (all - reference).abs().max().item<float>().Should().BeLessThan(1e-3f, "every expert on is the dense FFN");
        }

        var stream = TokenizerLoaderIds();
        var carvedPpl = PerplexityEvaluator.Evaluate(carved, stream, 64, 2).Perplexity;
        var densePpl = PerplexityEvaluator.Evaluate(dense, stream, 64, 2).Perplexity;
        double.IsFinite(carvedPpl).Should().BeTrue();
        carvedPpl.Should().NotBe(densePpl, "a carved model with 3 of 8 experts per token differs from the dense one");

        StreamingCarver.Carve(folder, calibration, options, dir["streamed"]);
        using var streamed = ModelFolder.Load(dir["streamed"]);
        streamed.Config.Architecture.Should().Be(dense.Config.Architecture);
        using var streamedLogits = streamed.Forward(probe);
        (streamedLogits - carvedLogits).abs().max().item<float>().Should().BeLessThan(1e-5f, "disk-to-disk carving equals carving in memory");
    }

    private static int[] TokenizerLoaderIds() =>
        CMoE.Modeling.Tokenization.TokenizerLoader.FromFolder(TestPaths.EmbeddedModel).Encode("The state of the union is strong. " + string.Concat(Enumerable.Repeat("We the people of the United States, in order to form a more perfect union. ", 12)), addBos: true);

    [Theory]
    [MemberData(nameof(Shapes))]
    public void ConfigRoundTripsThroughJson(string shape)
    {
        var config = SyntheticModels.Get(shape);
        var again = LlamaConfig.Parse(config.ToJson());
        again.ToJson().ToJsonString().Should().Be(config.ToJson().ToJsonString());
        (again with { SlidingLayers = null }).Should().Be(config with { SlidingLayers = null });
        again.SlidingLayers?.ToArray().Should().Equal(config.SlidingLayers!.ToArray());
    }

    [Fact]
    public void FamiliesSwitchOnTheirFeatures()
    {
        SyntheticModels.Get("qwen3-tiny").Should().Match<LlamaConfig>(c => c.QkNorm && c.HeadDim == 32 && c.HeadDim != c.HiddenSize / c.NumHeads && !c.QkvBias);
        SyntheticModels.Get("phi3-tiny").Family.FusedTensors.Select(f => f.Fused).Should().Equal("self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight");
        var gemma = SyntheticModels.Get("gemma2-tiny");
        gemma.Activation.Should().Be(GatedActivation.GeluTanh);
        gemma.NormWeightOffset.Should().Be(1);
        gemma.TieWordEmbeddings.Should().BeTrue();
        gemma.SlidingLayers.Should().Equal(true, false, true, false);   // even layers slide (HF Gemma2, llama.cpp's swa pattern 2)
        gemma.WindowOf(0).Should().Be(64);
        gemma.WindowOf(1).Should().BeNull();
        SyntheticModels.Get("llama-tiny").Should().Match<LlamaConfig>(c => !c.QkNorm && c.Activation == GatedActivation.Silu && c.SlidingLayers == null);
    }

    [Fact]
    public void PhiCheckpointStoresFusedTensorsAndLoadsThemSplit()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        string folder = Write(dir, "phi3-tiny");
        using (var file = SafeTensorsFile.Open(Path.Combine(folder, "model.safetensors")))
        {
            file.Tensors.Keys.Should().Contain("model.layers.0.self_attn.qkv_proj.weight").And.Contain("model.layers.0.mlp.gate_up_proj.weight");
            file.Tensors.Keys.Should().NotContain("model.layers.0.self_attn.q_proj.weight");
            using var qkv = file.Load("model.layers.0.self_attn.qkv_proj.weight", ScalarType.Float32);
            using var gateUp = file.Load("model.layers.0.mlp.gate_up_proj.weight", ScalarType.Float32);
            using var model = ModelFolder.Load(folder);
            var attention = model.Model.Layers[0].Attention.Projections;
            using var k = qkv.narrow(0, 64, 32);                                            // q: 4 heads x 16, then k: 2 x 16
            (attention[1].Weight - k).abs().max().item<float>().Should().Be(0f);
            var mlp = (SwiGluMlp)model.Model.Layers[0].Mlp;
            using var up = gateUp.narrow(0, 128, 128);                                      // gate first, then up
            (mlp.Up.Weight - up).abs().max().item<float>().Should().Be(0f);
        }
    }

    [Fact]
    public void UnknownArchitecturesAndActivationsFailNamingTheSupportedOnes()
    {
        var gptNeoX = TinyCheckpoint.Config("GPTNeoXForCausalLM");
        var act = () => LlamaConfig.Parse(gptNeoX);
        act.Should().Throw<CMoEFormatException>().WithMessage("*GPTNeoXForCausalLM*not supported*Qwen3ForCausalLM*Phi3ForCausalLM*Gemma2ForCausalLM*");
        var gemmaSilu = TinyCheckpoint.Config("Gemma2ForCausalLM");
        gemmaSilu["hidden_activation"] = "silu";
        var act2 = () => LlamaConfig.Parse(gemmaSilu);
        act2.Should().Throw<CMoEFormatException>().WithMessage("*hidden_activation 'silu'*Gemma-2*");
        ModelFamily.Find("Qwen3ForCausalLM").Should().NotBeNull();
    }
}
