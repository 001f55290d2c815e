using CMoE.MLNet;
using CMoE.Tests.MLNet;
using Microsoft.ML;

namespace CMoE.Tests.Reliability;

/// <summary>A loaded scoring transformer serves many threads: one PredictionEngine per thread, same answers.</summary>
public class ConcurrentScoringTests
{
    private static readonly string[] Texts =
    [
        "The state of the union is strong.",
        "We must balance the budget.",
        "Congress shall act on the bill this session.",
        "",
        "Our economy is growing and the people are working hard every day.",
    ];

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void EightThreadsWithOneEngineEachGetTheSingleThreadResults(bool carved)
    {
        TorchTestSetup.Pin();
        var ml = new MLContext(seed: 0);
        var rows = ml.Data.LoadFromEnumerable(Texts.Select(t => new LanguageModelWorkoutTests.TextRow { Text = t }));
        string calibrationText = File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "samples", "data", "sotu_train_sample.txt"))[..20_000];
        var calibration = ml.Data.LoadFromEnumerable(calibrationText.Split(". ").Select(t => new LanguageModelWorkoutTests.TextRow { Text = t }));
        using LanguageModelTransformerBase model = carved
            ? ml.Transforms.CarveMoE(new CarveMoEEstimator.Options
            {
                ModelFolder = TestPaths.EmbeddedModel, Layout = "S2A2E16", CalibrationSamples = 2, CalibrationLength = 64, MaxTokens = 24,
            }).Fit(calibration)
            : ml.Transforms.ScoreWithLanguageModel(new LanguageModelScoringEstimator.Options
            {
                ModelFolder = TestPaths.EmbeddedModel, MaxTokens = 24,
            }).Fit(rows);

        var reference = ml.Model.CreatePredictionEngine<LanguageModelWorkoutTests.TextRow, LanguageModelWorkoutTests.Scores>(model);
        var expected = Texts.Select(t => reference.Predict(new LanguageModelWorkoutTests.TextRow { Text = t }).LogLikelihood).ToArray();

        var errors = new System.Collections.Concurrent.ConcurrentBag<string>();
        var threads = Enumerable.Range(0, 8).Select(k => new Thread(() =>
        {
            try
            {
                var engine = ml.Model.CreatePredictionEngine<LanguageModelWorkoutTests.TextRow, LanguageModelWorkoutTests.Scores>(model);
                for (int round = 0; round < 3; round++)
                    for (int i = 0; i < Texts.Length; i++)
                    {
                        int j = (i + k) % Texts.Length;                      // threads visit the rows in different orders
                        float ll = engine.Predict(new LanguageModelWorkoutTests.TextRow { Text = Texts[j] }).LogLikelihood;
                        if (ll != expected[j]) errors.Add($"thread {k} row {j}: {ll} != {expected[j]}");
                    }
            }
            catch (Exception e)
            {
                errors.Add($"thread {k}: {e}");
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        errors.Should().BeEmpty();
    }
}
