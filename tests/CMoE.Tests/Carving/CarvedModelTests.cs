using CMoE.Carving;
using CMoE.Modeling;
using CMoE.Modeling.IO;
using CMoE.Modeling.MoE;
using CMoE.Tests.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Tests.Carving;

/// <summary>Carving the embedded tinyref model end to end (random calibration tokens keep it self-contained).</summary>
public class CarvedModelTests
{
    private static Tensor Calibration(int samples, int length, int seed)
    {
        var g = new Generator((ulong)seed);
        return randint(3, 8192, [samples, length], generator: g, dtype: ScalarType.Int64);
    }

    /// <summary>A fixed 12-token probe sentence of the embedded model.</summary>
    internal static Tensor Probe() => tensor(new long[] { 1, 450, 3681, 310, 278, 3303, 338, 1781, 2988, 13, 1576, 42 }).unsqueeze(0);

    [Fact]
    public void EveryExpertOnReproducesTheDenseModel()
    {
        TorchTestSetup.Pin();
        using var dense = ModelFolder.Load(TestPaths.EmbeddedModel);
        using var carved = ModelFolder.Load(TestPaths.EmbeddedModel);
        using var calibration = Calibration(2, 64, seed: 1);
        MoeCarver.Carve(carved, calibration, CarveOptions.Authors(MoeLayout.Parse("S2A2E16")));
        foreach (var layer in carved.Model.Layers) ((MoeBlock)layer.Mlp).ActiveExperts = 14;
        using var ids = Probe();
        using var noGrad = no_grad();
        using var a = dense.Forward(ids);
        using var b = carved.Forward(ids);
        (a - b).abs().max().item<float>().Should().BeLessThan(1e-3f);
    }

    [Fact]
    public void CarvedFolderRoundTripsExactlyAndDeterministically()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        var options = new CarveOptions { Layout = MoeLayout.Parse("S1A3E8"), KAct = 8 };
        using var calibration = Calibration(2, 64, seed: 2);
        Tensor expected;
        for (int run = 0; run < 2; run++)
        {
            using var model = ModelFolder.Load(TestPaths.EmbeddedModel);
            var report = MoeCarver.Carve(model, calibration, options);
            report.Layers.Should().HaveCount(8);
            CarvedFolder.Save(model, TestPaths.EmbeddedModel, dir[$"run{run}"], "S1A3E8");
            if (run == 0)
            {
                using var ids = Probe();
                using var noGrad = no_grad();
                expected = model.Forward(ids);
                using var reloaded = ModelFolder.Load(dir["run0"]);
                reloaded.Model.Layers.Should().AllSatisfy(l => l.Mlp.Should().BeOfType<MoeBlock>());
                using var actual = reloaded.Forward(ids);
                (actual - expected).abs().max().item<float>().Should().Be(0f);
                expected.Dispose();
            }
        }
        File.ReadAllBytes(dir["run0/model.safetensors"]).Should().Equal(File.ReadAllBytes(dir["run1/model.safetensors"]),
            "the same inputs must give byte-identical carved weights");
        File.Exists(dir["run0/tokenizer.model"]).Should().BeTrue();
        Directory.GetDirectories(dir.Path).Should().HaveCount(2, "no temporary folder is left behind");

        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        var act = () => StreamingCarver.Carve(TestPaths.EmbeddedModel, calibration, options, dir["cancelled"], cancel: cancelled.Token);
        act.Should().Throw<OperationCanceledException>();
        StreamingCarver.HasInterruptedCarve(dir["cancelled"]).Should().BeFalse();
        Directory.GetDirectories(dir.Path).Should().HaveCount(2, "a carve stopped before its first commit leaves no staging folder");
    }

    [Fact]
    public void StreamingCarveFromDiskIsByteIdenticalToCarvingInMemory()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        var options = new CarveOptions { Layout = MoeLayout.Parse("S2A2E16") };
        using var calibration = Calibration(2, 64, seed: 5);
        using (var model = ModelFolder.Load(TestPaths.EmbeddedModel))
        {
            MoeCarver.Carve(model, calibration, options);
            CarvedFolder.Save(model, TestPaths.EmbeddedModel, dir["memory"], "S2A2E16");
        }
        var report = StreamingCarver.Carve(TestPaths.EmbeddedModel, calibration, options, dir["streamed"]);
        report.Layers.Should().HaveCount(8);
        File.ReadAllBytes(dir["streamed/model.safetensors"]).Should().Equal(File.ReadAllBytes(dir["memory/model.safetensors"]));
        File.ReadAllText(dir["streamed/config.json"]).Should().Be(File.ReadAllText(dir["memory/config.json"]));
        Directory.GetDirectories(dir.Path).Should().HaveCount(2, "no temporary folder is left behind");
    }

    [Fact]
    public void ProfileOnceCarvesManyLayouts()
    {
        TorchTestSetup.Pin();
        using var calibration = Calibration(2, 64, seed: 3);
        using var dense = ModelFolder.Load(TestPaths.EmbeddedModel);
        using var profile = ActivationProfiler.Profile(dense, calibration, kAct: 10);
        profile.Layers.Should().Be(8);
        profile.Tokens.Should().Be(128);
        using (var ones = profile.Markers(0).to(ScalarType.Int64).sum([1]))
            ones.data<long>().ToArray().Should().AllSatisfy(n => n.Should().Be(10));
        foreach (var layout in new[] { "S2A2E16", "S3A3E8" })
        {
            using var model = ModelFolder.Load(TestPaths.EmbeddedModel);
            var report = MoeCarver.CarveFromProfile(model, profile, MoeLayout.Parse(layout));
            report.Layers.Should().HaveCount(8);
            ((MoeBlock)model.Model.Layers[7].Mlp).Shape.ActiveExperts.Should().Be(MoeLayout.Parse(layout).Active);
        }
    }

    [Fact]
    public void LayoutThatDoesNotFitIsRejectedBeforeAnyWork()
    {
        TorchTestSetup.Pin();
        using var model = ModelFolder.Load(TestPaths.EmbeddedModel);
        using var calibration = Calibration(1, 16, seed: 4);
        var act = () => MoeCarver.Carve(model, calibration, new CarveOptions { Layout = MoeLayout.Parse("S2A2E2048") });
        act.Should().Throw<ArgumentException>();
        model.Model.Layers.Should().AllSatisfy(l => l.Mlp.Should().BeOfType<SwiGluMlp>());
    }
}
