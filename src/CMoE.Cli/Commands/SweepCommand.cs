using System.Globalization;
using System.Text.Json.Nodes;
using CMoE.Carving;
using CMoE.Cli.Plotting;
using CMoE.Modeling.IO;
using CMoE.Modeling.Tokenization;
using CMoE.Sweeps;

namespace CMoE.Cli.Commands;

/// <summary><c>cmoe sweep</c>: carve many layouts from one calibration profile and chart quality against cost.</summary>
internal sealed class SweepCommand : ICommand
{
    /// <summary>Trials run when neither --layouts nor --trials is given (the standard space is large).</summary>
    private const int StandardTrials = 8;

    public string Summary => "expert-count sweep: quality vs cost of many layouts, Pareto front and plot";

    public string Usage => $"""
        cmoe sweep --model <hf-folder> --calibration <text> --eval <text> --out <folder>
                   [--layouts S1A1E8,S2A2E16,...] [--search grid|random] [--trials N] [--budget-minutes N]
                   [--max-windows 64] [--samples 8] [--seq-len 512] [--seed 0] [--k-act 10[,20..]]
                   [--score cosine[,raw]] [--iterations 1] [--decode-tokens 32] [--decode-runs 3]
                   [--target 0.5] [--no-dense] {CommonOptions.WeightsUsage} {CommonOptions.ThreadsUsage}
                   {CommonOptions.DeviceUsage} [--json]
          Profiles the calibration windows ONCE per (score, K_a) on the dense model and carves every layout from
          that profile (one-pass profiling: figures differ slightly from the sequential `cmoe carve`).
          Without --layouts the standard space (e in 8,16,32; active fraction 1/8..3/4) is searched, {StandardTrials} trials
          unless --trials says otherwise. Each trial: perplexity on --eval (windows of seq-len, at most max-windows),
          decode tokens/s (greedy, KV cache, median of the runs), active FFN fraction and active parameters.
          Writes sweep.json, sweep.md and pareto.png into --out (a temporary folder moved into place).
          --target: the largest active FFN fraction for the recommended layout.
          --weights: the format every model is measured in (perplexity and tokens/s); profiling and carving run on
          fp32 weights, then each model is converted (CPU only; default fp32).
        """;

    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "json", "verbose", "no-dense" };

    public int Run(CommandLine line, CancellationToken cancel)
    {
        string modelDir = line.Required("model", "hf-folder");
        string calibrationPath = line.Required("calibration", "text");
        string evalPath = line.Required("eval", "text");
        string outDir = line.Required("out", "folder");
        string? layouts = line.Optional("layouts");
        var strategy = line.Choice("search", SearchStrategy.Grid);
        int trials = line.Int("trials", 0, min: 1);
        double budgetMinutes = line.Double("budget-minutes", 0, min: 0);
        int maxWindows = line.Int("max-windows", 64, min: 1);
        int samples = line.Int("samples", 8, min: 1);
        int seqLen = line.Int("seq-len", 512, min: 2);
        int seed = line.Int("seed", 0);
        var kActs = ParseList<int>(line.Optional("k-act") ?? "10", "k-act", s => int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int k) && k >= 1 ? k : (int?)null);
        var scores = ParseList(line.Optional("score") ?? "cosine", "score", s => (ActivationScore?)CommandLine.ParseChoice<ActivationScore>("score", s));
        int iterations = line.Int("iterations", 1, min: 1);
        int decodeTokens = line.Int("decode-tokens", 32, min: 1);
        int decodeRuns = line.Int("decode-runs", 3, min: 1);
        double target = line.Double("target", 0.5, min: 0);
        bool noDense = line.Flag("no-dense");
        bool json = line.Flag("json");
        var weights = CommonOptions.Weights(line) ?? Modeling.Weights.WeightFormat.Fp32;
        var device = CommonOptions.Device(line);
        int threads = CommonOptions.Threads(line);
        line.RejectUnknown();
        CommonOptions.RequireCpuFor(weights, device);

        var config = CommonOptions.DenseConfig(modelDir, "sweep");
        var space = layouts is null
            ? SweepSpace.Standard(config.IntermediateSize, scores, kActs)
            : SweepSpace.Parse(layouts, scores, kActs);
        space.Validate(config.IntermediateSize);          // fail on a bad layout before any heavy work
        string calibrationText = CommonOptions.ReadText(calibrationPath, "Calibration");
        string evalText = CommonOptions.ReadText(evalPath, "Evaluation");

        var tokenizer = TokenizerLoader.FromFolder(modelDir);
        var windows = CalibrationSampler.Sample(tokenizer.Encode(calibrationText, addBos: true), samples, seqLen, seed);
        var evalStream = tokenizer.Encode(evalText, addBos: true);
        var options = new SweepOptions
        {
            Space = space,
            Metric = SweepMetric.Perplexity(evalStream, seqLen, maxWindows),
            Strategy = strategy,
            MaxTrials = trials > 0 ? trials : layouts is null ? StandardTrials : null,
            TimeBudget = budgetMinutes > 0 ? TimeSpan.FromMinutes(budgetMinutes) : null,
            Seed = seed,
            Iterations = iterations,
            DecodePrompt = evalStream.Take(16).ToArray(),
            DecodeTokens = decodeTokens,
            DecodeRuns = decodeRuns,
            IncludeDense = !noDense,
            Weights = weights,
        };
        var experiment = new SweepExperiment(() => ModelFolder.Load(modelDir, device: device), windows, options);
        var result = experiment.Run(new SyncProgress<SweepProgress>(p => Terminal.Info(p.Message)), cancel);

        string modelName = Path.GetFileName(Path.GetFullPath(modelDir).TrimEnd('/'));
        string evalName = Path.GetFileName(evalPath);
        var context = new JsonObject
        {
            ["model"] = modelName,
            ["calibration"] = Path.GetFileName(calibrationPath),
            ["eval"] = evalName,
            ["samples"] = samples,
            ["seq_len"] = seqLen,
            ["max_windows"] = maxWindows,
            ["seed"] = seed,
            ["search"] = strategy.ToString().ToLowerInvariant(),
            ["iterations"] = iterations,
            ["decode_prompt_tokens"] = options.DecodePrompt.Count,
            ["decode_tokens"] = decodeTokens,
            ["decode_runs"] = decodeRuns,
            ["threads"] = threads,
            ["device"] = device.ToString(),
            ["weights"] = weights.ToString(),
            ["profiling"] = "one-pass (dense model), reused across trials",
        };
        string title = $"CMoE sweep: {modelName}, {result.MetricName} on {evalName}";
        AtomicFolder.Write(outDir, tmp =>
        {
            File.WriteAllText(Path.Combine(tmp, "sweep.json"), SweepReport.ToJson(result, context));
            File.WriteAllText(Path.Combine(tmp, "sweep.md"), SweepReport.ToMarkdown(result, title));
            SweepPlot.Save(result, Path.Combine(tmp, "pareto.png"), title);
        });

        var pick = result.Recommend(target);
        var knee = result.Recommend();
        if (json)
        {
            Terminal.WriteJson(new JsonObject
            {
                ["out"] = Path.GetFullPath(outDir),
                ["trials"] = result.Trials.Count,
                ["profiles"] = result.Profiles,
                ["seconds"] = Math.Round(result.TotalSeconds, 3),
                ["recommended"] = pick?.Candidate.ToString(),
                ["target"] = target,
                ["knee"] = knee?.Candidate.ToString(),
            });
        }
        else
        {
            Console.WriteLine($"swept {result.Trials.Count} layout(s) in {result.TotalSeconds:F0} s ({result.Profiles} profile(s), computed once) -> {outDir}");
            Console.WriteLine(pick is null
                ? $"no Pareto layout has at most {target:P0} of the FFN active"
                : $"recommended (best {result.MetricName} with <= {target:P0} active): {pick.Candidate} ({result.MetricName} {pick.Metric:F3}, {pick.ActiveFraction:P1} active, {pick.TokensPerSecond:F1} tokens/s)");
            if (knee is not null) Console.WriteLine($"knee of the front: {knee.Candidate}");
        }
        return 0;
    }


    private static List<T> ParseList<T>(string text, string option, Func<string, T?> parse) where T : struct =>
        text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => parse(s) ?? throw new UsageException($"--{option} got '{s}', which is not valid; run 'cmoe sweep --help'"))
            .ToList();
}

/// <summary>An <see cref="IProgress{T}"/> that reports on the caller's thread (console apps have no sync context).</summary>
internal sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
