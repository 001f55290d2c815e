using System.IO.Compression;
using CMoE.MLNet;
using CMoE.Modeling.Weights;
using CMoE.Tests.Cli;
using CMoE.Tests.Modeling;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace CMoE.Tests.MLNet;

/// <summary>
/// ScoringOptions.Weights through the ML.NET layer: scoring in bf16/int8, carving stages that convert their result,
/// model zips that keep the format (a carved model's weights stored low-bit, a dense model's format recorded) and reload
/// identically, and the errors for a low-bit model fed to a stage that needs fp32 weights.
/// </summary>
public sealed class LowBitPipelineTests : IDisposable
{
    private const int MaxTokens = 32;
    private readonly string _dir = Directory.CreateTempSubdirectory("cmoe-lowbit-").FullName;

    public LowBitPipelineTests() => TorchTestSetup.Pin();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly string[] Texts =
    [
        "The state of the union is strong.",
        "We must lower taxes and balance the budget for our children.",
        "Our economy is growing, and the American people are working hard every single day.",
    ];

    private sealed class Row
    {
        public string Text { get; set; } = "";
    }

    private static IDataView Rows(MLContext ml) => ml.Data.LoadFromEnumerable(Texts.Select(t => new Row { Text = t }));

    private static IDataView Calibration(MLContext ml)
    {
        string text = File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "samples", "data", "sotu_train_sample.txt"))[..20_000];
        return ml.Data.LoadFromEnumerable(text.Split(". ").Select(s => new Row { Text = s + "." }));
    }

    private static float[] LogLikelihoods(ITransformer model, IDataView data) =>
        model.Transform(data).GetColumn<float>("LogLikelihood").ToArray();

    private static long EntryLength(string zip, string suffix)
    {
        using var archive = ZipFile.OpenRead(zip);
        return archive.Entries.Single(e => e.FullName.EndsWith(suffix, StringComparison.Ordinal)).Length;
    }

    private static bool HasEntry(string zip, string suffix)
    {
        using var archive = ZipFile.OpenRead(zip);
        return archive.Entries.Any(e => e.FullName.EndsWith(suffix, StringComparison.Ordinal));
    }

    private CarveMoEEstimator.Options Carve(WeightFormat? weights) => new()
    {
        ModelFolder = TestPaths.EmbeddedModel, Layout = "S2A2E16", CalibrationSamples = 4, CalibrationLength = 64,
        MaxTokens = MaxTokens, BatchSize = 4, EmbeddingColumnName = null, Weights = weights,
    };

    [Fact]
    public void DenseInt8ScoringIsCloseToFp32AndItsZipRecordsTheFormatAndReloadsIdentically()
    {
        var ml = new MLContext(seed: 0);
        LanguageModelScoringEstimator.Options Options(WeightFormat? w) => new()
        {
            ModelFolder = TestPaths.EmbeddedModel, MaxTokens = MaxTokens, EmbeddingColumnName = null, Weights = w,
        };
        float[] fp32;
        using (var dense = ml.Transforms.ScoreWithLanguageModel(Options(null)).Fit(Rows(ml)))
        {
            dense.Weights.Should().Be(WeightFormat.Fp32);
            fp32 = LogLikelihoods(dense, Rows(ml));
        }
        using var int8 = ml.Transforms.ScoreWithLanguageModel(Options(WeightFormat.Int8)).Fit(Rows(ml));
        int8.Weights.Kind.Should().Be(WeightKind.Int8);
        var expected = LogLikelihoods(int8, Rows(ml));
        expected.Should().NotEqual(fp32, "the int8 weights are what scores");
        for (int i = 0; i < fp32.Length; i++) expected[i].Should().BeApproximately(fp32[i], 0.02f * Math.Abs(fp32[i]));

        string zip = Path.Combine(_dir, "dense-int8.zip");
        ml.Model.Save(int8, Rows(ml).Schema, zip);
        HasEntry(zip, "lm-cmoe-weights.json").Should().BeTrue("a dense model's zip records the format it is held in");
        using var loaded = (LanguageModelTransformer)new MLContext(seed: 1).LoadCMoEModel(zip, out _);
        loaded.Weights.Should().Be(WeightFormat.Int8);
        LogLikelihoods(loaded, Rows(ml)).Should().Equal(expected);
    }

    [Fact]
    public void CarvedInt8ZipStoresInt8WeightsAndReloadsIdentically()
    {
        var ml = new MLContext(seed: 0);
        string fp32Zip = Path.Combine(_dir, "carved-fp32.zip"), int8Zip = Path.Combine(_dir, "carved-int8.zip");
        float[] fp32;
        using (var carved = ml.Transforms.CarveMoE(Carve(null)).Fit(Calibration(ml)))
        {
            fp32 = LogLikelihoods(carved, Rows(ml));
            ml.Model.Save(carved, Rows(ml).Schema, fp32Zip);
        }
        using var int8 = ml.Transforms.CarveMoE(Carve(WeightFormat.Parse("int8:64"))).Fit(Calibration(ml));
        int8.IsCarved.Should().BeTrue();
        int8.Weights.Should().Be(WeightFormat.Parse("int8:64"));
        var expected = LogLikelihoods(int8, Rows(ml));
        for (int i = 0; i < fp32.Length; i++) expected[i].Should().BeApproximately(fp32[i], 0.02f * Math.Abs(fp32[i]));

        ml.Model.Save(int8, Rows(ml).Schema, int8Zip);
        double ratio = (double)EntryLength(int8Zip, "lm-model.safetensors") / EntryLength(fp32Zip, "lm-model.safetensors");
        ratio.Should().BeLessThan(0.35, "the carved folder inside the zip holds int8 values and their scales, not fp32");
        HasEntry(int8Zip, "lm-cmoe-weights.json").Should().BeFalse("a carved folder records its format in its own config.json");
        using var loaded = (LanguageModelTransformer)new MLContext(seed: 2).LoadCMoEModel(int8Zip, out _);
        loaded.Weights.Should().Be(WeightFormat.Parse("int8:64"));
        loaded.Layout.Should().Be("S2A2E16");
        LogLikelihoods(loaded, Rows(ml)).Should().Equal(expected);
    }

    [Fact]
    public void TheLastStageOfAChainSetsTheFormatAndStagesThatNeedFp32SayWhere()
    {
        var ml = new MLContext(seed: 0);
        var chain = ml.Transforms.ProfileActivations(new ActivationProfilerEstimator.Options
            {
                ModelFolder = TestPaths.EmbeddedModel, CalibrationSamples = 4, CalibrationLength = 64, MaxTokens = MaxTokens,
            })
            .Append(ml.Transforms.CarveExperts(new MoECarverEstimator.Options { Layout = "S3A3E8", MaxTokens = MaxTokens }))
            .Append(ml.Transforms.FitRouter(new RouterFitEstimator.Options
            {
                BalanceIterations = 1, CalibrationSamples = 4, CalibrationLength = 64, MaxTokens = MaxTokens, Weights = WeightFormat.Bf16,
            }));
        using var fitted = chain.Fit(Calibration(ml));
        var stages = fitted.ToArray();
        ((LanguageModelTransformerBase)stages[1]).Weights.Should().Be(WeightFormat.Fp32, "only the stage given Weights converts");
        ((LanguageModelTransformerBase)stages[2]).Weights.Should().Be(WeightFormat.Bf16);
        var expected = LogLikelihoods(fitted, Rows(ml));
        string zip = Path.Combine(_dir, "chain-bf16.zip");
        ml.Model.Save(fitted, Rows(ml).Schema, zip);
        using (var loaded = (TransformerChain<ITransformer>)new MLContext(seed: 3).LoadCMoEModel(zip, out _))
        {
            ((LanguageModelTransformerBase)loaded.Last()).Weights.Should().Be(WeightFormat.Bf16);
            LogLikelihoods(loaded, Rows(ml)).Should().Equal(expected);
        }

        // A low-bit carved model cannot be fine-tuned: the fine-tuner names the fix.
        var tune = () => ml.Transforms.FineTuneMoE(new MoEFineTuner.Options { CalibrationSamples = 2, CalibrationLength = 16 },
            (LanguageModelTransformerBase)stages[2]).Fit(Calibration(ml));
        tune.Should().Throw<InvalidOperationException>().WithMessage("*bf16*needs fp32 weights*last stage*");
    }

    [Fact]
    public void ScoreCliTakesWeightsForAFolderAndRefusesThemForAZip()
    {
        using var dir = new TempDir();
        File.WriteAllLines(dir["in.tsv"], ["Text", "The state of the union is strong.", "Congress shall act."]);
        var run = CliRunner.Run("score", "--model", TestPaths.EmbeddedModel, "--input", dir["in.tsv"], "--text-column", "Text",
            "--out", dir["int8.tsv"], "--max-tokens", "32", "--weights", "int8", "--threads", "1");
        run.ExitCode.Should().Be(0, run.StdErr);
        var fp32 = CliRunner.Run("score", "--model", TestPaths.EmbeddedModel, "--input", dir["in.tsv"], "--text-column", "Text",
            "--out", dir["fp32.tsv"], "--max-tokens", "32", "--threads", "1");
        fp32.ExitCode.Should().Be(0, fp32.StdErr);
        File.ReadAllLines(dir["int8.tsv"]).Skip(1).Should().NotEqual(File.ReadAllLines(dir["fp32.tsv"]).Skip(1), "--weights int8 scores with int8 weights");

        var ml = new MLContext(seed: 0);
        using (var model = ml.Transforms.ScoreWithLanguageModel(TestPaths.EmbeddedModel).Fit(Rows(ml)))
            ml.Model.Save(model, Rows(ml).Schema, dir["model.zip"]);
        var zip = CliRunner.Run("score", "--model", dir["model.zip"], "--input", dir["in.tsv"], "--text-column", "Text",
            "--out", dir["zip.tsv"], "--weights", "bf16");
        zip.ExitCode.Should().NotBe(0);
        zip.StdErr.Should().Contain("--weights applies to a model folder");
        File.Exists(dir["zip.tsv"]).Should().BeFalse();
    }
}
