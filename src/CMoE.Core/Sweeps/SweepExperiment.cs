using System.Diagnostics;
using System.Globalization;
using CMoE.Carving;
using CMoE.Modeling;
using static TorchSharp.torch;

namespace CMoE.Sweeps;

/// <summary>
/// An AutoML-style expert-count sweep: carves a fresh copy of the dense model for each candidate layout
/// from a one-pass <see cref="ActivationProfile"/> (computed ONCE per (score, K_a) and reused by every
/// trial), measures quality (the <see cref="SweepMetric"/>) and cost (active FFN fraction, active
/// parameters, decode tokens/s), and marks the Pareto fronts.
/// </summary>
/// <remarks>
/// The profile is taken on the dense model in one pass (<see cref="ActivationProfiler"/>), not
/// sequentially on already-carved layers as <see cref="MoeCarver.Carve"/> does, so a trial's quality
/// differs slightly from a <c>cmoe carve</c> of the same layout.
/// </remarks>
public sealed class SweepExperiment
{
    private readonly Func<LlamaForCausalLM> _loadDense;
    private readonly long[,] _calibration;

    /// <summary>Creates the experiment.</summary>
    /// <param name="loadDense">Returns a fresh dense copy of the model each call (e.g. <c>() =&gt; ModelFolder.Load(dir)</c>); the sweep disposes it.</param>
    /// <param name="calibration">Calibration windows [samples, seq_len] (see <see cref="CalibrationSampler.Sample"/>).</param>
    /// <param name="options">Search space, budget and metric.</param>
    public SweepExperiment(Func<LlamaForCausalLM> loadDense, long[,] calibration, SweepOptions options)
    {
        ArgumentNullException.ThrowIfNull(loadDense);
        ArgumentNullException.ThrowIfNull(calibration);
        ArgumentNullException.ThrowIfNull(options);
        if (calibration.GetLength(0) < 1 || calibration.GetLength(1) < 2)
            throw new ArgumentException("Calibration must be token windows [samples, seq_len] with samples >= 1 and seq_len >= 2.");
        _loadDense = loadDense;
        _calibration = calibration;
        Options = options;
    }

    /// <summary>The options.</summary>
    public SweepOptions Options { get; }

    /// <summary>Runs the sweep.</summary>
    /// <param name="progress">Receives log lines and finished trials.</param>
    /// <param name="cancel">Cancels between and inside trials (throws <see cref="OperationCanceledException"/>).</param>
    public SweepResult Run(IProgress<SweepProgress>? progress = null, CancellationToken cancel = default)
    {
        cancel.ThrowIfCancellationRequested();
        var clock = Stopwatch.StartNew();
        var options = Options;
        var order = options.Space.Order(options.Strategy, options.Seed);
        int planned = Math.Min(order.Count, options.MaxTrials ?? int.MaxValue);
        var profiles = new Dictionary<(ActivationScore, int), ActivationProfile>();
        var trials = new List<SweepTrial>();
        DenseReference? dense = null;
        double profileSeconds = 0;
        bool stoppedByTime = false;
        void Log(string message, SweepTrial? trial = null) => progress?.Report(new SweepProgress(message, trials.Count, planned, trial));
        try
        {
            LlamaConfig config;
            using (var model = _loadDense())
            {
                config = model.Config;
                options.Validate(config.IntermediateSize);
                Log(string.Create(CultureInfo.InvariantCulture,
                    $"sweep: {planned} of {order.Count} candidates ({options.Strategy.ToString().ToLowerInvariant()} search), metric {options.Metric.Name}"));
                // Profile every (score, K_a) the planned trials need, once, on the dense model.
                using var ids = tensor(_calibration);                                // [samples, seq_len]
                foreach (var key in order.Take(planned).Select(c => (c.Score, c.KAct)).Distinct())
                {
                    cancel.ThrowIfCancellationRequested();
                    int users = order.Take(planned).Count(c => (c.Score, c.KAct) == key);
                    Log(string.Create(CultureInfo.InvariantCulture,
                        $"profiling calibration once ({ids.shape[0]} x {ids.shape[1]} tokens, {key.Score.ToString().ToLowerInvariant()}, K_a = {key.KAct}); reused by {users} trial(s)"));
                    var t0 = Stopwatch.GetTimestamp();
                    profiles[key] = ActivationProfiler.Profile(model, ids, key.Score, key.KAct, options.ProfileBatch, cancel: cancel);
                    profileSeconds += Stopwatch.GetElapsedTime(t0).TotalSeconds;
                    Log(string.Create(CultureInfo.InvariantCulture, $"profiled in {Stopwatch.GetElapsedTime(t0).TotalSeconds:F1} s"));
                }
                if (options.IncludeDense)
                {
                    cancel.ThrowIfCancellationRequested();
                    var (metric, speed, _) = Measure(model, options);
                    dense = new DenseReference(ActiveParameters.Dense(config), metric, speed);
                    Log(string.Create(CultureInfo.InvariantCulture, $"dense: {options.Metric.Name} {metric:F3}, {speed:F1} tokens/s"));
                }
            }

            foreach (var candidate in order.Take(planned))
            {
                cancel.ThrowIfCancellationRequested();
                if (options.TimeBudget is { } budget && clock.Elapsed >= budget)
                {
                    stoppedByTime = true;
                    Log($"time budget of {budget.TotalMinutes:0.#} min spent; {planned - trials.Count} planned trial(s) not run");
                    break;
                }
                var profile = profiles[(candidate.Score, candidate.KAct)];
                using var model = _loadDense();
                Log($"trial {trials.Count + 1}/{planned}: carving {candidate} from the cached profile (no re-profiling)");
                var report = MoeCarver.CarveFromProfile(model, profile, candidate.Layout, options.Iterations, cancel: cancel);
                cancel.ThrowIfCancellationRequested();
                var (metric, speed, metricSeconds) = Measure(model, options);
                var trial = new SweepTrial(trials.Count, candidate, candidate.Layout.ActiveFraction,
                    ActiveParameters.Carved(config, candidate.Layout), metric, speed, report.Seconds, metricSeconds);
                trials.Add(trial);
                Log(string.Create(CultureInfo.InvariantCulture,
                    $"trial {trials.Count}/{planned}: {candidate} active {trial.ActiveFraction:P1}, {options.Metric.Name} {metric:F3}, {speed:F1} tokens/s, carve {report.Seconds:F1} s"), trial);
            }
        }
        finally
        {
            foreach (var p in profiles.Values) p.Dispose();
        }
        var marked = SweepResult.MarkPareto(trials, options.Metric.LowerIsBetter);
        return new SweepResult(options.Metric.Name, options.Metric.LowerIsBetter, marked, dense, profiles.Count, profileSeconds,
            clock.Elapsed.TotalSeconds, order.Count - trials.Count, stoppedByTime);
    }

    /// <summary>The metric, its seconds and the decode speed of <paramref name="model"/> in <see cref="SweepOptions.Weights"/>.</summary>
    private static (double Metric, double Speed, double MetricSeconds) Measure(LlamaForCausalLM model, SweepOptions options)
    {
        using var converted = options.Weights.Kind == Modeling.Weights.WeightKind.Fp32 ? null : Modeling.Weights.ModelConversion.Convert(model, options.Weights);
        var measured = converted ?? model;
        var t0 = Stopwatch.GetTimestamp();
        double metric = options.Metric.Evaluate(measured);
        double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        return (metric, Speed(measured, options), seconds);
    }

    private static double Speed(LlamaForCausalLM model, SweepOptions options) =>
        options.DecodePrompt is { Count: > 0 } prompt
            ? DecodeSpeed.TokensPerSecond(model, prompt, options.DecodeTokens, options.DecodeRuns)
            : double.NaN;
}
