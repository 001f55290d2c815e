using System.Collections.Concurrent;
using System.Diagnostics;
using CMoE.MLNet;
using CMoE.Tests.MLNet;
using Microsoft.ML;
using Xunit.Abstractions;

namespace CMoE.Tests.Reliability;

/// <summary>The soak test measures the process's memory, so it runs alone, after the parallel classes.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SoakCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "soak (measures the whole process)";
}

/// <summary>
/// A service under load, in one process: eight threads score with their own PredictionEngines (four on the dense model,
/// four on a carved one), one thread carves with <c>CarveMoE</c> over and over, one fine-tunes with <c>FineTuneMoE</c>,
/// one forces garbage collections and finalizers. Every score must equal the single-threaded one, no thread may fail,
/// and after the warm-up neither the resident set (native memory included) nor the managed heap may keep growing.
/// Runs for <see cref="DefaultSeconds"/> seconds; set <c>CMOE_SOAK_SECONDS</c> for a longer soak.
/// </summary>
[Collection(SoakCollection.Name)]
public class SoakTests(ITestOutputHelper output)
{
    private const int DefaultSeconds = 60;

    private static readonly string[] Texts =
    [
        "The state of the union is strong.",
        "We must balance the budget and keep faith with those who served.",
        "Congress shall act on the bill this session.",
        "",
        "Our economy is growing and the people are working hard every day.",
        "Mr. Speaker, Mr. Vice President, members of Congress, my fellow Americans:",
    ];

    private static int Seconds() =>
        int.TryParse(Environment.GetEnvironmentVariable("CMOE_SOAK_SECONDS"), out int s) && s > 0 ? s : DefaultSeconds;

    /// <summary>Resident set size of this process in MB (Linux VmRSS), or -1 where /proc is not available.</summary>
    private static double RssMb()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) / 1024.0;
        }
        catch (IOException) { }
        return -1;
    }

    private static IDataView Rows(MLContext ml, IEnumerable<string> texts) =>
        ml.Data.LoadFromEnumerable(texts.Select(t => new LanguageModelWorkoutTests.TextRow { Text = t }).ToList());

    [Fact]
    public void ScoringCarvingFineTuningAndCollectionsTogetherStayCorrectAndFlat()
    {
        TorchTestSetup.Pin();
        int seconds = Seconds();
        var ml = new MLContext(seed: 0);
        string text = File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "samples", "data", "sotu_train_sample.txt"))[..20_000];
        var calibration = Rows(ml, text.Split(". "));
        var carveOptions = () => new CarveMoEEstimator.Options
        {
            ModelFolder = TestPaths.EmbeddedModel, Layout = "S2A2E16", CalibrationSamples = 2, CalibrationLength = 64, MaxTokens = 32,
        };
        using LanguageModelTransformerBase dense = ml.Transforms.ScoreWithLanguageModel(new LanguageModelScoringEstimator.Options
        {
            ModelFolder = TestPaths.EmbeddedModel, MaxTokens = 32,
        }).Fit(Rows(ml, Texts));
        using LanguageModelTransformerBase carved = ml.Transforms.CarveMoE(carveOptions()).Fit(calibration);

        float[] Reference(ITransformer model)
        {
            var engine = ml.Model.CreatePredictionEngine<LanguageModelWorkoutTests.TextRow, LanguageModelWorkoutTests.Scores>(model);
            return Texts.Select(t => engine.Predict(new LanguageModelWorkoutTests.TextRow { Text = t }).LogLikelihood).ToArray();
        }
        var expected = new[] { Reference(dense), Reference(carved) };
        expected[0].Should().NotEqual(expected[1], "the carved model must score differently from the dense one");

        var errors = new ConcurrentQueue<string>();
        long scores = 0, carves = 0, fineTunes = 0, collections = 0;
        using var stop = new CancellationTokenSource();
        void Guard(string who, Action<CancellationToken> body)
        {
            try { body(stop.Token); }
            catch (Exception e) { errors.Enqueue($"{who}: {e}"); stop.Cancel(); }
        }

        var threads = new List<Thread>();
        for (int k = 0; k < 8; k++)
        {
            int worker = k;
            threads.Add(new Thread(() => Guard($"scorer {worker}", token =>
            {
                var model = worker % 2 == 0 ? dense : carved;
                var reference = expected[worker % 2];
                var engine = ml.Model.CreatePredictionEngine<LanguageModelWorkoutTests.TextRow, LanguageModelWorkoutTests.Scores>(model);
                for (int i = worker; !token.IsCancellationRequested; i++)
                {
                    int j = i % Texts.Length;
                    float ll = engine.Predict(new LanguageModelWorkoutTests.TextRow { Text = Texts[j] }).LogLikelihood;
                    if (ll != reference[j]) errors.Enqueue($"scorer {worker} row {j}: {ll} != {reference[j]}");
                    Interlocked.Increment(ref scores);
                }
            })));
        }
        threads.Add(new Thread(() => Guard("carver", token =>
        {
            while (!token.IsCancellationRequested)
            {
                using var model = ml.Transforms.CarveMoE(carveOptions()).Fit(calibration);
                var again = Reference(model);
                if (!again.SequenceEqual(expected[1])) errors.Enqueue($"carver: a fresh carve scored {string.Join(", ", again)}, expected {string.Join(", ", expected[1])}");
                Interlocked.Increment(ref carves);
            }
        })));
        threads.Add(new Thread(() => Guard("fine-tuner", token =>
        {
            using var upstream = ml.Transforms.CarveMoE(carveOptions()).Fit(calibration);
            while (!token.IsCancellationRequested)
            {
                using var tuned = ml.Transforms.FineTuneMoE(new MoEFineTuner.Options
                {
                    CalibrationSamples = 4, CalibrationLength = 32, LearningRate = 1e-3, MaxTokens = 32,
                }, upstream).Fit(calibration);
                if (Reference(tuned).SequenceEqual(expected[1])) errors.Enqueue("fine-tuner: fine-tuning left the scores unchanged");
                Interlocked.Increment(ref fineTunes);
            }
        })));

        // The collector also samples memory once a second.
        var rss = new List<(double Seconds, double RssMb, double ManagedMb)>();
        var clock = Stopwatch.StartNew();
        threads.Add(new Thread(() => Guard("collector", token =>
        {
            var lastSample = TimeSpan.FromSeconds(-1);
            while (!token.IsCancellationRequested)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
                Interlocked.Increment(ref collections);
                if (clock.Elapsed - lastSample >= TimeSpan.FromSeconds(1))
                {
                    lastSample = clock.Elapsed;
                    lock (rss) rss.Add((lastSample.TotalSeconds, RssMb(), GC.GetTotalMemory(false) / 1048576.0));
                }
                Thread.Sleep(5);
            }
        })));

        threads.ForEach(t => t.Start());
        stop.Token.WaitHandle.WaitOne(TimeSpan.FromSeconds(seconds));
        stop.Cancel();
        threads.ForEach(t => t.Join());

        // Warm-up: the first third of the run (at least 10 s, at most a minute); then compare the mean of the samples just
        // after it with the mean of the last ones (single samples move with the moment's garbage).
        double warmUp = Math.Clamp(seconds / 3.0, 10, 60);
        var after = rss.Where(s => s.Seconds >= warmUp).ToList();
        int window = Math.Max(3, after.Count / 5);
        output.WriteLine($"soak {seconds} s: {scores} scores, {carves} carves, {fineTunes} fine-tunes, {collections} forced collections, errors {errors.Count}");
        foreach (var s in rss.Where((_, i) => i % Math.Max(1, rss.Count / 12) == 0 || i == rss.Count - 1))
            output.WriteLine($"  t = {s.Seconds,5:F0} s  RSS {s.RssMb,7:F1} MB  managed {s.ManagedMb,6:F1} MB");
        errors.Should().BeEmpty();
        carves.Should().BeGreaterThan(0, "the carver must have completed at least one carve");
        fineTunes.Should().BeGreaterThan(0, "the fine-tuner must have completed at least one run");
        scores.Should().BeGreaterThan(100);
        if (rss[0].RssMb < 0) return;                                            // no /proc: nothing more to measure
        after.Count.Should().BeGreaterThanOrEqualTo(2 * window, "the soak must sample memory well past the warm-up");
        double rssStart = after.Take(window).Average(s => s.RssMb), rssEnd = after.TakeLast(window).Average(s => s.RssMb);
        double managedStart = after.Take(window).Average(s => s.ManagedMb), managedEnd = after.TakeLast(window).Average(s => s.ManagedMb);
        output.WriteLine($"after warm-up ({warmUp:F0} s): RSS {rssStart:F1} -> {rssEnd:F1} MB ({(rssEnd / rssStart - 1) * 100:+0.0;-0.0}%), " +
                         $"managed {managedStart:F1} -> {managedEnd:F1} MB");
        rssEnd.Should().BeLessThan(rssStart * 1.10, "resident memory must stay flat after the warm-up (growth < 10%)");
        managedEnd.Should().BeLessThan(managedStart * 1.10 + 16, "the managed heap must stay flat after the warm-up");
    }
}
