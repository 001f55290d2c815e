using System.CommandLine;
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

    private readonly Option<string> _model = CliOptions.Required("--model", "hf-folder", "the dense model to carve");
    private readonly Option<string> _calibration = CliOptions.Required("--calibration", "text", "the calibration text");
    private readonly Option<string> _eval = CliOptions.Required("--eval", "text", "the text perplexity is measured on");
    private readonly Option<string> _out = CliOptions.Required("--out", "folder", "the folder for sweep.json, sweep.md and pareto.png");
    private readonly Option<string?> _layouts = CliOptions.Optional("--layouts", "S1A1E8,S2A2E16,...", "the layouts to try (default: the standard space)");
    private readonly Option<SearchStrategy> _search = CliOptions.Choice("--search", SearchStrategy.Grid, "how the space is searched");
    private readonly Option<int?> _trials = CliOptions.OptionalInt("--trials", $"trials to run (default: all of --layouts, or {StandardTrials} of the standard space)", min: 1);
    private readonly Option<double> _budgetMinutes = CliOptions.Double("--budget-minutes", 0, "stop starting trials after this many minutes (0 = no limit)", min: 0);
    private readonly Option<int> _maxWindows = CliOptions.Int("--max-windows", 64, "evaluation windows per trial", min: 1);
    private readonly Option<int> _samples = CliOptions.Int("--samples", 8, "calibration windows", min: 1);
    private readonly Option<int> _seqLen = CliOptions.Int("--seq-len", 512, "tokens per calibration and evaluation window", min: 2);
    private readonly Option<int> _seed = CliOptions.Int("--seed", 0, "seed of the calibration windows and the random search");
    private readonly Option<string> _kAct = new("--k-act") { Description = "K_a values to try, comma-separated", HelpName = "10[,20..]", DefaultValueFactory = _ => "10" };
    private readonly Option<string> _score = new("--score") { Description = "activation scores to try, comma-separated", HelpName = "cosine[,raw]", DefaultValueFactory = _ => "cosine" };
    private readonly Option<int> _iterations = CliOptions.Int("--iterations", 1, "balanced k-means iterations", min: 1);
    private readonly Option<int> _decodeTokens = CliOptions.Int("--decode-tokens", 32, "tokens decoded per speed run", min: 1);
    private readonly Option<int> _decodeRuns = CliOptions.Int("--decode-runs", 3, "speed runs per trial (median)", min: 1);
    private readonly Option<double> _target = CliOptions.Double("--target", 0.5, "largest active FFN fraction of the recommended layout", min: 0);
    private readonly Option<bool> _noDense = CliOptions.Flag("--no-dense", "skip the dense model's reference figures");

    public string Name => "sweep";

    public string Summary => "expert-count sweep: quality vs cost of many layouts, Pareto front and plot";

    public string Details => $"""
        Profiles the calibration windows ONCE per (score, K_a) on the dense model and carves every layout from
        that profile (one-pass profiling: figures differ slightly from the sequential `cmoe carve`).
        Without --layouts the standard space (e in 8,16,32; active fraction 1/8..3/4) is searched, {StandardTrials} trials
        unless --trials says otherwise. Each trial: perplexity on --eval (windows of seq-len, at most max-windows),
        decode tokens/s (greedy, KV cache, median of the runs), active FFN fraction and active parameters.
        Writes sweep.json, sweep.md and pareto.png into --out (a temporary folder moved into place).
        --weights: the format every model is measured in (perplexity and tokens/s); profiling and carving run on
        fp32 weights, then each model is converted (CPU only; default fp32).
        """;

    public IEnumerable<Option> Options =>
    [
        _model, _calibration, _eval, _out, _layouts, _search, _trials, _budgetMinutes, _maxWindows, _samples, _seqLen, _seed,
        _kAct, _score, _iterations, _decodeTokens, _decodeRuns, _target, _noDense, CommonOptions.WeightsOption,
        .. CommonOptions.Runtime, CommonOptions.JsonOption,
    ];

    public int Run(ParseResult line, CancellationToken cancel)
    {
        string modelDir = line.GetValue(_model)!;
        string calibrationPath = line.GetValue(_calibration)!;
        string evalPath = line.GetValue(_eval)!;
        string outDir = line.GetValue(_out)!;
        string? layouts = line.GetValue(_layouts);
        var strategy = line.GetValue(_search);
        int trials = line.GetValue(_trials) ?? 0;
        double budgetMinutes = line.GetValue(_budgetMinutes);
        int maxWindows = line.GetValue(_maxWindows);
        int samples = line.GetValue(_samples);
        int seqLen = line.GetValue(_seqLen);
        int seed = line.GetValue(_seed);
        var kActs = ParseList<int>(line.GetValue(_kAct)!, "k-act", s => int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int k) && k >= 1 ? k : (int?)null);
        var scores = ParseList(line.GetValue(_score)!, "score", s => (ActivationScore?)CliOptions.ParseChoice<ActivationScore>("--score", s));
        int iterations = line.GetValue(_iterations);
        int decodeTokens = line.GetValue(_decodeTokens);
        int decodeRuns = line.GetValue(_decodeRuns);
        double target = line.GetValue(_target);
        bool noDense = line.GetValue(_noDense);
        bool json = line.GetValue(CommonOptions.JsonOption);
        var weights = CommonOptions.Weights(line) ?? Modeling.Weights.WeightFormat.Fp32;
        var device = CommonOptions.Device(line);
        int threads = CommonOptions.Threads(line);
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
