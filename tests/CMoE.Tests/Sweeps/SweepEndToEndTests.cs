using CMoE.Carving;
using CMoE.Cli;
using CMoE.Cli.Commands;
using CMoE.Modeling.IO;
using CMoE.Modeling.Tokenization;
using CMoE.Sweeps;

namespace CMoE.Tests.Sweeps;

/// <summary>Small, fast sweeps on the embedded tinyref-llama with the vendored SOTU slices (no ../shared needed).</summary>
public class SweepEndToEndTests
{
    private static string Data(string name) => Path.Combine(TestPaths.RepoRoot, "samples", "data", name);

    [Fact]
    public void SweepProfilesOnceAndMeasuresEveryLayout()
    {
        TorchTestSetup.Pin();
        string model = TestPaths.EmbeddedModel;
        var tokenizer = TokenizerLoader.FromFolder(model);
        var calibration = CalibrationSampler.Sample(tokenizer.Encode(File.ReadAllText(Data("sotu_train_sample.txt"))[..20_000]), 2, 64, seed: 0);
        var eval = tokenizer.Encode(File.ReadAllText(Data("sotu_val_sample.txt"))[..5_000]);
        int customCalls = 0;
        var options = new SweepOptions
        {
            Space = SweepSpace.Parse("S1A1E8,S2A2E16"),
            Metric = SweepMetric.Perplexity(eval, seqLen: 64, maxWindows: 2),
            DecodePrompt = eval.Take(4).ToArray(),
            DecodeTokens = 3,
            DecodeRuns = 1,
        };
        var log = new List<SweepProgress>();

        var result = new SweepExperiment(() => ModelFolder.Load(model), calibration, options).Run(new ListProgress(log));

        log.Count(p => p.Message.StartsWith("profiling", StringComparison.Ordinal)).Should().Be(1, "the calibration is profiled once for both layouts");
        result.Profiles.Should().Be(1);
        result.Trials.Select(t => t.Layout.ToString()).Should().Equal("S1A1E8", "S2A2E16");
        result.Trials.Should().OnlyContain(t => double.IsFinite(t.Metric) && t.Metric > 1 && t.TokensPerSecond > 0 && t.ActiveFraction == 0.25);
        result.Dense!.Metric.Should().BeLessThan(result.Trials.Min(t => t.Metric), "carving at 25% active costs quality");
        result.Trials.Should().Contain(t => t.ParetoByFraction);
        log.Where(p => p.Trial is not null).Should().HaveCount(2);

        // A user metric (higher is better) replaces perplexity; the trial budget cuts the grid.
        var custom = options with
        {
            Metric = new SweepMetric("layers", m => { customCalls++; return m.Config.NumLayers; }, LowerIsBetter: false),
            MaxTrials = 1,
            IncludeDense = false,
            DecodePrompt = null,
        };
        var one = new SweepExperiment(() => ModelFolder.Load(model), calibration, custom).Run();
        one.Trials.Should().ContainSingle().Which.Metric.Should().Be(8);
        one.Trials[0].TokensPerSecond.Should().Be(double.NaN);
        one.CandidatesSkipped.Should().Be(1);
        customCalls.Should().Be(1);
    }

    [Fact]
    public void CancellationStopsTheSweep()
    {
        TorchTestSetup.Pin();
        string model = TestPaths.EmbeddedModel;
        var options = new SweepOptions { Space = SweepSpace.Parse("S1A1E8"), Metric = new SweepMetric("zero", _ => 0) };
        using var cancel = new CancellationTokenSource();
        cancel.Cancel();
        var act = () => new SweepExperiment(() => ModelFolder.Load(model), new long[1, 8], options).Run(cancel: cancel.Token);
        act.Should().Throw<OperationCanceledException>();
    }

    [Fact]
    public void EveryMeasurementRunsInTheRequestedWeightFormat()
    {
        TorchTestSetup.Pin();
        string model = TestPaths.EmbeddedModel;
        var seen = new List<CMoE.Modeling.Weights.WeightFormat>();
        var options = new SweepOptions
        {
            Space = SweepSpace.Parse("S1A1E8,S2A2E16"),
            Metric = new SweepMetric("format", m => { seen.Add(m.Precision.Weights); return seen.Count; }),
            Weights = CMoE.Modeling.Weights.WeightFormat.Int8,
        };
        var result = new SweepExperiment(() => ModelFolder.Load(model), new long[1, 16], options).Run();
        result.Trials.Should().HaveCount(2);
        seen.Should().HaveCount(3, "the dense reference and both trials").And.OnlyContain(w => w.Kind == CMoE.Modeling.Weights.WeightKind.Int8);
    }

    [Fact]
    public void CliWritesJsonMarkdownAndPng()
    {
        TorchTestSetup.Pin();
        string dir = Path.Combine(Path.GetTempPath(), "cmoe-sweep-test-" + Guid.NewGuid().ToString("N"));
        string outDir = Path.Combine(dir, "out");
        Directory.CreateDirectory(dir);
        try
        {
            string calib = Path.Combine(dir, "calib.txt"), eval = Path.Combine(dir, "eval.txt");
            File.WriteAllText(calib, File.ReadAllText(Data("sotu_train_sample.txt"))[..10_000]);
            File.WriteAllText(eval, File.ReadAllText(Data("sotu_val_sample.txt"))[..4_000]);
            string[] args =
            [
                "sweep", "--model", TestPaths.EmbeddedModel, "--calibration", calib, "--eval", eval, "--out", outDir,
                "--layouts", "S1A1E8,S2A2E16", "--samples", "2", "--seq-len", "64", "--max-windows", "2",
                "--decode-tokens", "3", "--decode-runs", "1", "--no-dense", "--json", "--threads", "1",
            ];

            CliApp.Run(args, CancellationToken.None).Should().Be(0);

            Directory.GetFiles(outDir).Select(Path.GetFileName).Should().BeEquivalentTo("sweep.json", "sweep.md", "pareto.png");
            File.ReadAllBytes(Path.Combine(outDir, "pareto.png")).Take(4).Should().Equal(0x89, (byte)'P', (byte)'N', (byte)'G');
            string json = File.ReadAllText(Path.Combine(outDir, "sweep.json"));
            json.Should().Contain("\"format\": \"cmoe-sweep\"").And.Contain("\"layout\": \"S2A2E16\"").And.Contain("\"pareto_fraction\"");
            File.ReadAllText(Path.Combine(outDir, "sweep.md")).Should().Contain("| S1A1E8 | 25.0% |");
            Directory.GetDirectories(dir).Should().ContainSingle("the temporary folder was moved into place");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private sealed class ListProgress(List<SweepProgress> log) : IProgress<SweepProgress>
    {
        public void Report(SweepProgress value) => log.Add(value);
    }
}
