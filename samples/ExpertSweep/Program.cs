// ExpertSweep: which MoE layout of the embedded tinyref-llama gives the best perplexity for its cost?
// Profiles the calibration text once, carves each layout from that profile on a fresh dense copy, measures
// perplexity and decode speed, and prints the table, the Pareto front and a recommended layout.
//   dotnet run --project samples/ExpertSweep [-- --target 0.5 --threads 2 --quick]
using System.Globalization;
using CMoE.Carving;
using CMoE.Modeling.Backend;
using CMoE.Modeling.IO;
using CMoE.Modeling.Tokenization;
using CMoE.Sweeps;

double target = 0.5;      // recommend the best perplexity with at most this active FFN fraction
int threads = 1;        // one libtorch thread: on a shared 2-core box, 2 threads oversubscribe and decode slows several-fold
bool quick = false;       // fewer layouts and windows (used by the smoke test)
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--target": target = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--threads": threads = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--quick": quick = true; break;
        default: Console.Error.WriteLine($"unknown argument '{args[i]}'; use --target F, --threads N, --quick"); return 2;
    }
}

string root = FindRepoRoot();
string modelDir = Path.Combine(root, "models", "tinyref-llama");
string calibrationText = File.ReadAllText(Path.Combine(root, "samples", "data", "sotu_train_sample.txt"));
string evalText = File.ReadAllText(Path.Combine(root, "samples", "data", "sotu_val_sample.txt"));
TorchRuntime.SetThreads(threads);

var tokenizer = TokenizerLoader.FromFolder(modelDir);
int seqLen = quick ? 128 : 256;
var calibration = CalibrationSampler.Sample(tokenizer.Encode(calibrationText, addBos: true), samples: 8, seqLen, seed: 0);
var evalStream = tokenizer.Encode(evalText, addBos: true);
string layouts = quick ? "S1A1E8,S2A2E16" : "S1A1E8,S2A2E16,S1A3E8,S4A4E16,S3A3E8,S6A6E16,S2A6E16";

var options = new SweepOptions
{
    Space = SweepSpace.Parse(layouts),
    // Any Func<LlamaForCausalLM, double> works here, e.g. a downstream score from an ML.NET pipeline:
    // Metric = new SweepMetric("accuracy", model => MyPipelineAccuracy(model), LowerIsBetter: false),
    Metric = SweepMetric.Perplexity(evalStream, seqLen, maxWindows: quick ? 4 : 32),
    DecodePrompt = evalStream.Take(16).ToArray(),
    DecodeTokens = quick ? 8 : 32,
};
var sweep = new SweepExperiment(() => ModelFolder.Load(modelDir), calibration, options);
var result = sweep.Run(new Progress(line => Console.WriteLine("  " + line)));

Console.WriteLine();
Console.WriteLine(SweepReport.ToMarkdown(result, "Expert-count sweep of tinyref-llama (sotu_val_sample.txt)"));
var pick = result.Recommend(target);
Console.WriteLine(pick is null
    ? $"No Pareto layout has at most {target:P0} of the FFN active; raise --target."
    : $"Recommended layout (best perplexity with <= {target:P0} of the FFN active): {pick.Candidate} " +
      $"(perplexity {pick.Metric:F2}, {pick.ActiveFraction:P1} active, {pick.ActiveParameters / 1e6:F2} M active parameters, {pick.TokensPerSecond:F1} tokens/s)");
if (result.Recommend() is { } knee) Console.WriteLine($"Knee of the perplexity / active-fraction front: {knee.Candidate}");
return 0;

static string FindRepoRoot()
{
    var dir = new DirectoryInfo(AppContext.BaseDirectory);
    while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "CMoE.MLNet.sln"))) dir = dir.Parent;
    return dir?.FullName ?? throw new DirectoryNotFoundException("Run the sample from inside the CMoE.MLNet repository (CMoE.MLNet.sln not found above it).");
}

/// <summary>Prints each sweep log line as it comes (on the sweep's thread).</summary>
internal sealed class Progress(Action<string> write) : IProgress<SweepProgress>
{
    public void Report(SweepProgress value) => write(value.Message);
}
