using System.Diagnostics;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Serialization;
using CMoE.MLNet;
using Microsoft.ML;
using Microsoft.ML.Data;
using Xunit.Abstractions;

namespace CMoE.Tests.MLNet;

/// <summary>
/// Estimator workout tests (conventions point 8) for the CMoE ML.NET layer on the embedded tinyref model:
/// fit, transform, save, reload in a new MLContext and in a new process, identical outputs. Calibration is tiny
/// (4 windows of 64 tokens) and rows are short (max 32 tokens) so the whole class runs in well under a minute.
/// </summary>
public sealed class LanguageModelWorkoutTests : IDisposable
{
    private const int Samples = 4, Length = 64, MaxTokens = 32;
    private readonly ITestOutputHelper _output;
    private readonly string _dir = Directory.CreateTempSubdirectory("cmoe-mlnet-").FullName;

    public LanguageModelWorkoutTests(ITestOutputHelper output)
    {
        TorchTestSetup.Pin();
        _output = output;
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string Model => TestPaths.EmbeddedModel;

    /// <summary>Calibration rows: paragraphs of the vendored SOTU slice.</summary>
    private static IDataView Calibration(MLContext ml)
    {
        string text = File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "samples", "data", "sotu_train_sample.txt"))[..20_000];
        var rows = text.Split(". ").Select(s => new TextRow { Text = s + "." });
        return ml.Data.LoadFromEnumerable(rows);
    }

    private static readonly string[] Texts =
    [
        "The state of the union is strong.",
        "We must lower taxes and balance the budget for our children.",
        "",
        "Congress shall act.",
        "Our economy is growing, and the American people are working hard every single day to build a better future.",
    ];

    private static IDataView Rows(MLContext ml, IEnumerable<string>? texts = null) =>
        ml.Data.LoadFromEnumerable((texts ?? Texts).Select(t => new TextRow { Text = t }));

    private static (float[] Ppl, float[] Ll, float[][] Emb) Outputs(ITransformer model, IDataView data)
    {
        var scored = model.Transform(data);
        return (scored.GetColumn<float>("Perplexity").ToArray(), scored.GetColumn<float>("LogLikelihood").ToArray(),
            scored.GetColumn<float[]>("Embedding").ToArray());
    }

    private static void Identical((float[] Ppl, float[] Ll, float[][] Emb) a, (float[] Ppl, float[] Ll, float[][] Emb) b)
    {
        b.Ppl.Should().Equal(a.Ppl);
        b.Ll.Should().Equal(a.Ll);
        b.Emb.Length.Should().Be(a.Emb.Length);
        for (int i = 0; i < a.Emb.Length; i++) b.Emb[i].Should().Equal(a.Emb[i]);
    }

    private CarveMoEEstimator.Options CarveOptions() => new()
    {
        ModelFolder = Model, Layout = "S2A2E16", CalibrationSamples = Samples, CalibrationLength = Length, MaxTokens = MaxTokens, BatchSize = 4,
    };

    [Fact]
    public void CarveMoEFitsScoresAndRoundTripsThroughNewContextAndNewProcess()
    {
        var ml = new MLContext(seed: 0);
        using var model = ml.Transforms.CarveMoE(CarveOptions()).Fit(Calibration(ml));
        model.IsCarved.Should().BeTrue();
        model.Layout.Should().Be("S2A2E16");
        var expected = Outputs(model, Rows(ml));
        expected.Ppl.Where((_, i) => Texts[i].Length > 0).Should().OnlyContain(p => p > 1 && float.IsFinite(p));
        expected.Emb.Should().OnlyContain(e => e.Length == 384);

        // Empty text: NaN perplexity, zero log-likelihood, zero embedding (documented in ScoringOptions).
        expected.Ppl[2].Should().Be(float.NaN);
        expected.Ll[2].Should().Be(0);
        expected.Emb[2].Should().OnlyContain(x => x == 0);

        string zip = Path.Combine(_dir, "carved.zip");
        ml.Model.Save(model, Rows(ml).Schema, zip);

        var ml2 = new MLContext(seed: 1);
        var loaded = ml2.LoadCMoEModel(zip, out var schema);
        schema!.GetColumnOrNull("Text")!.Value.Type.Should().Be(TextDataViewType.Instance);
        loaded.Should().BeOfType<LanguageModelTransformer>().Which.Layout.Should().Be("S2A2E16");
        Identical(expected, Outputs(loaded, Rows(ml2)));
        (loaded as IDisposable)!.Dispose();

        var probe = RunProbe(zip, Texts);
        Identical(expected, (probe.Transform.Ppl, probe.Transform.Ll, probe.Transform.Emb));
        // One row at a time (PredictionEngine) agrees with the batched transform up to float rounding.
        for (int i = 0; i < Texts.Length; i++)
        {
            if (Texts[i].Length == 0) continue;
            probe.Predict.Ll[i].Should().BeApproximately(expected.Ll[i], 1e-3f * Math.Max(1, Math.Abs(expected.Ll[i])));
        }
    }

    [Fact]
    public void DenseModelWrapsScoresAndAgreesBetweenTransformAndPredictionEngine()
    {
        var ml = new MLContext(seed: 0);
        var options = new LanguageModelScoringEstimator.Options { ModelFolder = Model, MaxTokens = MaxTokens, LabelTexts = [" tax", " war"] };
        using var model = ml.Transforms.ScoreWithLanguageModel(options).Fit(Rows(ml));
        model.IsCarved.Should().BeFalse();
        model.Layout.Should().BeNull();
        var expected = Outputs(model, Rows(ml));
        var labels = model.Transform(Rows(ml)).GetColumn<float[]>("LabelScores").ToArray();
        labels.Should().OnlyContain(l => l.Length == 2 && l.All(x => x < 0 && float.IsFinite(x)));

        var engine = ml.Model.CreatePredictionEngine<TextRow, Scores>(model);
        for (int i = 0; i < Texts.Length; i++)
        {
            var p = engine.Predict(new TextRow { Text = Texts[i] });
            if (Texts[i].Length == 0)
            {
                p.Perplexity.Should().Be(float.NaN);
                p.Embedding.Should().OnlyContain(x => x == 0);
                continue;
            }
            p.LogLikelihood.Should().BeApproximately(expected.Ll[i], 1e-3f * Math.Abs(expected.Ll[i]));
            p.Perplexity.Should().BeApproximately(expected.Ppl[i], 1e-3f * expected.Ppl[i]);
            for (int j = 0; j < p.Embedding.Length; j += 37) p.Embedding[j].Should().BeApproximately(expected.Emb[i][j], 1e-3f);
            p.LabelScores.Should().HaveCount(2);
        }

        string zip = Path.Combine(_dir, "dense.zip");
        ml.Model.Save(model, Rows(ml).Schema, zip);
        var loaded = new MLContext(seed: 2).LoadCMoEModel(zip, out _);
        Identical(expected, Outputs(loaded, Rows(ml)));
        (loaded as IDisposable)!.Dispose();
    }

    [Fact]
    public void ProfileCarveAndRouterStagesChainRoundTripAndKeepTheirState()
    {
        var ml = new MLContext(seed: 0);
        var calibration = Calibration(ml);
        var chain = ml.Transforms.ProfileActivations(new ActivationProfilerEstimator.Options
            {
                ModelFolder = Model, CalibrationSamples = Samples, CalibrationLength = Length, MaxTokens = MaxTokens,
            })
            .Append(ml.Transforms.CarveExperts(new MoECarverEstimator.Options { Layout = "S3A3E8", MaxTokens = MaxTokens }))
            .Append(ml.Transforms.FitRouter(new RouterFitEstimator.Options
            {
                BalanceIterations = 3, BiasStep = 0.002f, CalibrationSamples = Samples, CalibrationLength = Length, MaxTokens = MaxTokens,
            }));
        var fitted = chain.Fit(calibration);
        var stages = fitted.ToArray();
        var profiler = stages[0].Should().BeOfType<ActivationProfilerTransformer>().Subject;
        var carver = stages[1].Should().BeOfType<MoECarverTransformer>().Subject;
        var router = stages[2].Should().BeOfType<RouterFitTransformer>().Subject;
        profiler.IsCarved.Should().BeFalse();
        profiler.Profile.Layers.Should().Be(8);
        profiler.Profile.Tokens.Should().Be(Samples * Length);
        carver.Layout.Should().Be("S3A3E8");
        carver.Report!.Layers.Should().HaveCount(8);
        router.Balance!.Iterations.Should().Be(3);
        _output.WriteLine($"router load imbalance {router.Balance.ImbalanceBefore:F3} -> {router.Balance.ImbalanceAfter:F3}");
        router.Balance.ImbalanceAfter.Should().BeLessThanOrEqualTo(router.Balance.ImbalanceBefore);

        // The dense, carved and balanced stages differ; the chain's output is the last stage's.
        var dense = Outputs(profiler, Rows(ml));
        var carved = Outputs(carver, Rows(ml));
        var expected = Outputs(fitted, Rows(ml));
        carved.Ll.Should().NotEqual(dense.Ll);
        Identical(Outputs(router, Rows(ml)), expected);

        string zip = Path.Combine(_dir, "chain.zip");
        ml.Model.Save(fitted, Rows(ml).Schema, zip);
        var ml2 = new MLContext(seed: 3);
        var loaded = (TransformerChain<ITransformer>)ml2.LoadCMoEModel(zip, out _);
        Identical(expected, Outputs(loaded, Rows(ml2)));
        var reloaded = loaded.ToArray();
        ((ActivationProfilerTransformer)reloaded[0]).Profile.Tokens.Should().Be(Samples * Length);
        using (var a = profiler.Profile.Markers(3).to(TorchSharp.torch.ScalarType.Int32))
        using (var b = ((ActivationProfilerTransformer)reloaded[0]).Profile.Markers(3).to(TorchSharp.torch.ScalarType.Int32))
            a.equal(b).all().item<bool>().Should().BeTrue();
        ((RouterFitTransformer)reloaded[2]).Balance.Should().Be(router.Balance);
        Identical(carved, Outputs(reloaded[1], Rows(ml2)));
        loaded.Dispose();
        fitted.Dispose();

        var probe = RunProbe(zip, Texts);
        Identical(expected, (probe.Transform.Ppl, probe.Transform.Ll, probe.Transform.Emb));
    }

    [Fact]
    public void CarverAloneCarvesSequentiallyFromItsModelFolder()
    {
        var ml = new MLContext(seed: 0);
        using var carver = ml.Transforms.CarveExperts(new MoECarverEstimator.Options
        {
            ModelFolder = Model, Layout = "S2A2E16", CalibrationSamples = Samples, CalibrationLength = Length, MaxTokens = MaxTokens,
            PerplexityColumnName = null, LogLikelihoodColumnName = "LL", EmbeddingColumnName = null,
        }).Fit(Calibration(ml));
        carver.IsCarved.Should().BeTrue();
        var scored = carver.Transform(Rows(ml));
        scored.Schema.GetColumnOrNull("Perplexity").Should().BeNull();
        scored.Schema.GetColumnOrNull("Embedding").Should().BeNull();
        scored.GetColumn<float>("LL").Should().OnlyContain(x => x <= 0);

        string zip = Path.Combine(_dir, "carver.zip");
        ml.Model.Save(carver, Rows(ml).Schema, zip);
        var loaded = new MLContext(seed: 4).LoadCMoEModel(zip, out _);
        loaded.Transform(Rows(ml)).GetColumn<float>("LL").Should().Equal(scored.GetColumn<float>("LL"));
        (loaded as IDisposable)!.Dispose();
    }

    [Fact]
    public void FineTunerTrainsTheCarvedModelAndReloadsIdentically()
    {
        var ml = new MLContext(seed: 0);
        MoEFineTuner.IsAvailable.Should().BeTrue();
        using var carver = ml.Transforms.CarveExperts(new MoECarverEstimator.Options
        {
            ModelFolder = Model, Layout = "S2A2E16", CalibrationSamples = Samples, CalibrationLength = Length, MaxTokens = MaxTokens,
        }).Fit(Calibration(ml));
        var before = carver.Transform(Rows(ml)).GetColumn<float>("LogLikelihood").ToArray();
        using var tuned = ml.Transforms.FineTuneMoE(new MoEFineTuner.Options
        {
            CalibrationSamples = 4, CalibrationLength = 32, LearningRate = 1e-3, MaxTokens = MaxTokens,
        }, carver).Fit(Calibration(ml));
        var after = tuned.Transform(Rows(ml)).GetColumn<float>("LogLikelihood").ToArray();
        after.Zip(before).Should().Contain(p => Math.Abs(p.First - p.Second) > 1e-4f, "fine-tuning must change the carved model");
        carver.Transform(Rows(ml)).GetColumn<float>("LogLikelihood").Should().Equal(before, "the upstream carved model is left untouched");

        string zip = Path.Combine(_dir, "tuned.zip");
        ml.Model.Save(tuned, Rows(ml).Schema, zip);
        using var loaded = (IDisposable)new MLContext(seed: 5).LoadCMoEModel(zip, out _);
        ((ITransformer)loaded).Transform(Rows(ml)).GetColumn<float>("LogLikelihood").Should().Equal(after);
    }

    [Fact]
    public void ChainedStagesNeedAnUpstreamModel()
    {
        var ml = new MLContext(seed: 0);
        var fineTune = () => ml.Transforms.FineTuneMoE().Fit(Rows(ml));
        fineTune.Should().Throw<InvalidOperationException>().WithMessage("*carved model*");
        var carver = () => ml.Transforms.CarveExperts().Fit(Rows(ml));
        carver.Should().Throw<InvalidOperationException>().WithMessage("*ProfileActivations*");
        var router = () => ml.Transforms.FitRouter().Fit(Rows(ml));
        router.Should().Throw<InvalidOperationException>().WithMessage("*carved model*");
    }

    [Fact]
    public void WrongOrMissingTextColumnFailsNamingColumnAndType()
    {
        var ml = new MLContext(seed: 0);
        var numbers = ml.Data.LoadFromEnumerable(new[] { new NumberRow { Text = 1 }, new NumberRow { Text = 2 } });
        var estimator = ml.Transforms.ScoreWithLanguageModel(Model);

        var schema = () => estimator.GetOutputSchema(ShapeFromSchema(numbers.Schema));
        schema.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*'Text'*Single*expected String*");
        var fit = () => estimator.Fit(numbers);
        fit.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*'Text'*");

        var missing = () => ml.Transforms.ScoreWithLanguageModel(Model, textColumnName: "Body").Fit(Rows(ml));
        missing.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*'Body' not found*String*");

        using var fitted = estimator.Fit(Rows(ml));
        var transform = () => fitted.Transform(numbers);
        transform.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*'Text' has type Single, expected String*");
        var calibrate = () => ml.Transforms.CarveMoE(Model).Fit(numbers);
        calibrate.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*'Text'*");
    }

    /// <summary>ML.NET's internal SchemaShape.Create (what EstimatorChain.Fit calls first).</summary>
    private static SchemaShape ShapeFromSchema(DataViewSchema schema) =>
        (SchemaShape)typeof(SchemaShape).GetMethod("Create", BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic, [typeof(DataViewSchema)])!
            .Invoke(null, [schema])!;

    private sealed record ProbeResult((float[] Ppl, float[] Ll, float[][] Emb) Transform, (float[] Ppl, float[] Ll, float[][] Emb) Predict);

    private ProbeResult RunProbe(string zip, string[] texts)
    {
        string probe = typeof(LanguageModelWorkoutTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .Single(a => a.Key == "ZipProbePath").Value!;
        string textsPath = Path.Combine(_dir, "texts.json");
        File.WriteAllText(textsPath, JsonSerializer.Serialize(texts));
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (string arg in new[] { "exec", probe, zip, textsPath, "--text" }) start.ArgumentList.Add(arg);
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit(120_000).Should().BeTrue("the probe finishes within 2 minutes");
        process.ExitCode.Should().Be(0, stderr.Result);
        var json = JsonSerializer.Deserialize<ProbeJson>(stdout, new JsonSerializerOptions { NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals })!;
        return new ProbeResult(Unpack(json.Transform), Unpack(json.Predict));
    }

    private static (float[], float[], float[][]) Unpack(Dictionary<string, JsonElement> d)
    {
        var o = new JsonSerializerOptions { NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };
        return (d["Perplexity"].Deserialize<float[]>(o)!, d["LogLikelihood"].Deserialize<float[]>(o)!, d["Embedding"].Deserialize<float[][]>(o)!);
    }

    private sealed class ProbeJson
    {
        [JsonPropertyName("transform")] public Dictionary<string, JsonElement> Transform { get; set; } = [];
        [JsonPropertyName("predict")] public Dictionary<string, JsonElement> Predict { get; set; } = [];
    }

    public sealed class TextRow
    {
        public string Text { get; set; } = "";
    }

    public sealed class NumberRow
    {
        public float Text { get; set; }
    }

    public sealed class Scores
    {
        public float Perplexity { get; set; }
        public float LogLikelihood { get; set; }
        public float[] Embedding { get; set; } = [];
        public float[] LabelScores { get; set; } = [];
    }
}
