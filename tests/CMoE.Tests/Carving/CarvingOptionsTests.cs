using CMoE.Carving;
using CMoE.Evaluation;
using CMoE.MLNet;
using CMoE.Modeling;
using CMoE.Modeling.IO;
using CMoE.Modeling.MoE;
using CMoE.Tests.MLNet;
using CMoE.Tests.Modeling;
using Microsoft.ML;
using Microsoft.ML.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Tests.Carving;

/// <summary>The carving options of issue #16 (threshold routing, mean router vectors, down-norm weighting) and the measured active fraction.</summary>
public class CarvingOptionsTests
{
    private static Tensor Calibration(int samples, int length, int seed)
    {
        var g = new Generator((ulong)seed);
        return randint(3, 8192, [samples, length], generator: g, dtype: ScalarType.Int64);
    }

    private static (double Mean, double Max) Measure(LlamaForCausalLM model, Tensor ids)
    {
        using var noGrad = no_grad();
        ActiveFraction.Reset(model);
        using (var _ = model.Forward(ids)) { }
        return ActiveFraction.Measured(model);
    }

    [Fact]
    public void CarvedActiveFractionIsOneForDenseAndTheLayoutsShareForTopA()
    {
        TorchTestSetup.Pin();
        using var model = ModelFolder.Load(TestPaths.EmbeddedModel);
        using var ids = CarvedModelTests.Probe();
        Measure(model, ids).Should().Be((1.0, 1.0));
        using var calibration = Calibration(2, 64, seed: 1);
        MoeCarver.Carve(model, calibration, new CarveOptions { Layout = MoeLayout.Parse("S2A2E16") });
        var (mean, max) = Measure(model, ids);
        mean.Should().BeApproximately(0.25, 1e-9);
        max.Should().BeApproximately(0.25, 1e-9);
    }

    [Fact]
    public void CarvedThresholdRouterUsesAExpertsOnAverageOnItsCalibrationTokensAndAVariableCount()
    {
        TorchTestSetup.Pin();
        using var model = ModelFolder.Load(TestPaths.EmbeddedModel);
        using var calibration = Calibration(4, 64, seed: 2);
        MoeCarver.Carve(model, calibration, new CarveOptions { Layout = MoeLayout.Parse("S2A2E16"), Routing = RouterSelection.Threshold });
        model.Model.Layers.Should().AllSatisfy(l => ((MoeBlock)l.Mlp).RouterThreshold.Should().NotBeNull());
        // The carved model's forward pass on the calibration tokens sees the FFN inputs the thresholds were calibrated on.
        var (mean, max) = Measure(model, calibration);
        mean.Should().BeApproximately(0.25, 0.005, "tau is calibrated so the mean routed count is a = 2 of 16 experts (+ 2 shared)");
        max.Should().BeGreaterThan(0.25 + 1.0 / 16, "some tokens use more than a routed experts");
        foreach (var layer in model.Model.Layers)
        {
            var moe = (MoeBlock)layer.Mlp;
            var (tokens, neurons, _) = moe.ActiveCount;
            double perToken = (neurons / (double)tokens - moe.Shape.SharedSize) / moe.Shape.ExpertSize;
            perToken.Should().BeApproximately(2, 0.1, $"layer routed experts per token");
        }
    }

    [Fact]
    public void CarvedThresholdRouterDecodesTheSameWithTheCacheAsTheFullForward()
    {
        // The variable-count decode paths (managed decode step, per-block kernel) against the grouped full forward.
        TorchTestSetup.Pin();
        using var model = ModelFolder.Load(TestPaths.EmbeddedModel);
        using (var calibration = Calibration(2, 64, seed: 3))
            MoeCarver.Carve(model, calibration, new CarveOptions { Layout = MoeLayout.Parse("S1A3E8"), Routing = RouterSelection.Threshold });
        using var noGrad = no_grad();
        using var ids = CarvedModelTests.Probe();                         // [1, 12]
        using var full = model.Forward(ids);                              // grouped path
        using var cache = new KvCache(model.Config, 1, 16, CPU, ScalarType.Float32);
        using (var _ = model.Forward(ids.narrow(1, 0, 4), cache)) { }
        for (int t = 4; t < 12; t++)
        {
            using var step = model.Forward(ids.narrow(1, t, 1), cache);   // one token: decode kernels
            using var expected = full.narrow(1, t, 1);
            (step - expected).abs().max().item<float>().Should().BeLessThan(2e-3f, $"position {t}");
        }
        foreach (var layer in model.Model.Layers)
        {
            var moe = (MoeBlock)layer.Mlp;
            using var x = randn(3, model.Config.HiddenSize);
            using var grouped = moe.GroupedForward(x, moe.MaxRoutedPerToken);
            using var fast = moe.FastForward(x, moe.MaxRoutedPerToken);
            (grouped - fast).abs().max().item<float>().Should().BeLessThan(1e-4f);
        }
    }

    [Fact]
    public void CarvedOptionsRoundTripThroughTheFolder()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        using var model = ModelFolder.Load(TestPaths.EmbeddedModel);
        using (var calibration = Calibration(2, 64, seed: 4))
            MoeCarver.Carve(model, calibration, new CarveOptions
            {
                Layout = MoeLayout.Parse("S2A2E16"), Routing = RouterSelection.Threshold, RouterVectors = RouterVectors.Mean,
                NeuronWeighting = NeuronWeighting.DownNorm,
            });
        CarvedFolder.Save(model, TestPaths.EmbeddedModel, dir["carved"], "S2A2E16");
        using var reloaded = ModelFolder.Load(dir["carved"]);
        for (int l = 0; l < model.Model.Layers.Count; l++)
            ((MoeBlock)reloaded.Model.Layers[l].Mlp).RouterThreshold.Should().Be(((MoeBlock)model.Model.Layers[l].Mlp).RouterThreshold);
        using var ids = CarvedModelTests.Probe();
        using var noGrad = no_grad();
        using var a = model.Forward(ids);
        using var b = reloaded.Forward(ids);
        (a - b).abs().max().item<float>().Should().Be(0f);
    }

    [Fact]
    public void CarvedThresholdRoutingRoundTripsThroughAnMLNetZip()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        var ml = new MLContext(seed: 0);
        string text = File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "samples", "data", "sotu_train_sample.txt"))[..20_000];
        var calibration = ml.Data.LoadFromEnumerable(text.Split(". ").Select(s => new LanguageModelWorkoutTests.TextRow { Text = s + "." }));
        var options = new CarveMoEEstimator.Options
        {
            ModelFolder = TestPaths.EmbeddedModel, Layout = "S2A2E16", CalibrationSamples = 4, CalibrationLength = 64, MaxTokens = 32,
            Routing = RouterSelection.Threshold, RouterVectors = RouterVectors.Mean,
        };
        using var model = ml.Transforms.CarveMoE(options).Fit(calibration);
        var rows = ml.Data.LoadFromEnumerable(new[] { "The state of the union is strong.", "Congress shall act." }.Select(t => new LanguageModelWorkoutTests.TextRow { Text = t }));
        var expected = model.Transform(rows).GetColumn<float>("LogLikelihood").ToArray();
        string zip = dir["carved.zip"];
        ml.Model.Save(model, rows.Schema, zip);
        var loaded = new MLContext(seed: 1).LoadCMoEModel(zip, out _);
        loaded.Transform(rows).GetColumn<float>("LogLikelihood").ToArray().Should().Equal(expected);
        using (var z = System.IO.Compression.ZipFile.OpenRead(zip))
        {
            z.Entries.Where(e => e.FullName.EndsWith("config.json", StringComparison.Ordinal))
                .Select(e => { using var reader = new StreamReader(e.Open()); return reader.ReadToEnd(); })
                .Should().Contain(c => c.Contains("router_thresholds"), "the carved folder in the zip keeps the thresholds");
        }
        (loaded as IDisposable)!.Dispose();
    }
}
