using System.CommandLine;
using System.Text.Json.Nodes;
using CMoE.Carving;
using CMoE.Modeling.IO;
using CMoE.Modeling.Tokenization;
using static TorchSharp.torch;

namespace CMoE.Cli.Commands;

/// <summary><c>cmoe carve</c>: turn a dense model's FFNs into shared + routed experts.</summary>
internal sealed class CarveCommand : ICommand
{
    private readonly Option<string> _model = CliOptions.Required("--model", "hf-folder", "the dense Hugging Face model folder");
    private readonly Option<string> _calibration = CliOptions.Required("--calibration", "text", "the calibration text");
    private readonly Option<string> _layout = CliOptions.Required("--layout", "S2A2E16", "S{s}A{a}E{e}: e experts, s shared, a routed active per token");
    private readonly Option<string> _out = CliOptions.Required("--out", "folder", "the carved folder to write");
    private readonly Option<int> _samples = CliOptions.Int("--samples", 8, "calibration windows", min: 1);
    private readonly Option<int> _seqLen = CliOptions.Int("--seq-len", 512, "tokens per calibration window", min: 2);
    private readonly Option<int> _kAct = CliOptions.Int("--k-act", CarveOptions.DefaultKAct, "K_a: neurons marked active per token", min: 1);
    private readonly Option<ActivationScore> _score = CliOptions.Choice("--score", ActivationScore.Raw, "neuron score: raw SwiGLU activation or the authors' cosine form");
    private readonly Option<int> _iterations = CliOptions.Int("--iterations", 1, "balanced k-means iterations", min: 1);
    private readonly Option<RouterSelection> _routing = CliOptions.Choice("--routing", RouterSelection.TopK, "topk: a fixed a experts per token; threshold: dynamic-K, a on average");
    private readonly Option<RouterVectors> _routerVectors = CliOptions.Choice("--router-vectors", RouterVectors.Mean, "router rows from each expert's representative neuron or the mean of its neurons");
    private readonly Option<NeuronWeighting> _neuronWeighting = CliOptions.Choice("--neuron-weighting", NeuronWeighting.DownNorm, "neuron scores alone, or times ||W_down[:, i]||");
    private readonly Option<DownProjectionFit> _downFit = CliOptions.Choice("--down-fit", DownProjectionFit.Ridge, "none: experts keep the dense W_down columns; ridge: refit them in closed form to the dense FFN output");
    private readonly Option<double> _downFitRidge = CliOptions.Double("--down-fit-ridge", CarveOptions.DefaultDownFitRidge, "relative ridge strength of --down-fit ridge (larger: closer to the dense columns)", min: 1e-12);
    private readonly Option<CarveRecipe> _recipe = CliOptions.Choice("--recipe", CarveRecipe.Default, "default: this library's carving; authors: the authors' procedure (options given explicitly still apply)");
    private readonly Option<int> _seed = CliOptions.Int("--seed", 0, "seed of the calibration windows");
    private readonly Option<bool> _streaming = CliOptions.Flag("--streaming", "carve disk to disk, one decoder layer in memory at a time");
    private readonly Option<bool> _resume = CliOptions.Flag("--resume", "continue an interrupted --streaming carve");

    public string Name => "carve";

    public string Summary => "carve a dense model into a Mixture-of-Experts (training-free)";

    public string Details => """
        Calibration windows = `samples` random windows of seq-len tokens from BOS + encode(file), drawn with seed.
        Layout S{s}A{a}E{e}: e experts of d_h/e neurons, s shared (always on), a routed active per token.
        --routing threshold: dynamic-K, every routed expert with p + b >= tau, tau per layer calibrated so the mean
        count on the calibration tokens is a (the per-token count varies; not with --streaming). --router-vectors
        mean: router rows = mean of each expert's normalised gate/up rows instead of its representative neuron's.
        --neuron-weighting downnorm: neuron scores times ||W_down[:, i]|| before the top-k-act markers.
        --down-fit ridge: after carving a layer, its experts' W_down columns are refitted in closed form (ridge
        regression toward the dense columns, strength --down-fit-ridge) so the carved block reproduces the dense
        FFN's output on the calibration tokens; same neurons, router and cost per token.
        The defaults are this library's recipe (docs/benchmarks.md, "Carving quality"); --recipe authors gives the
        authors' procedure (cosine score, k-act 10, representative router rows, no weighting, no down fit).
        The output folder (config.json with a cmoe section, model.safetensors, tokenizer files) is written
        under a temporary name and moved into place. --streaming carves from disk to disk with one decoder
        layer in memory at a time (CPU; byte-identical output), for models larger than memory. It keeps its
        progress in <out>.partial, committed layer by layer: after a kill or Ctrl+C, rerun the same command with
        --resume to continue from the last completed layer (same bytes as an uninterrupted carve; the inputs and
        options must match, or it says which differs). Without --resume an interrupted carve there is an error
        (delete the folder to start over); with --resume and nothing to resume it starts from the first layer.
        --weights: the format of the weights written (carving itself runs on fp32 weights; bf16 and int8 folders
        are format version 2, which eval, score, bench and the ML.NET estimators load as they are). Not with
        --streaming, which writes fp32; load its output with --weights instead.
        """;

    public IEnumerable<Option> Options =>
    [
        _model, _calibration, _layout, _out, _samples, _seqLen, _kAct, _score, _iterations, _routing, _routerVectors, _neuronWeighting, _downFit, _downFitRidge, _recipe, _seed, _streaming, _resume,
        CommonOptions.WeightsOption, .. CommonOptions.Runtime, CommonOptions.JsonOption,
    ];

    public int Run(ParseResult line, CancellationToken cancel)
    {
        string modelDir = line.GetValue(_model)!;
        string calibrationPath = line.GetValue(_calibration)!;
        var layout = MoeLayout.Parse(line.GetValue(_layout)!);
        string outDir = line.GetValue(_out)!;
        int samples = line.GetValue(_samples);
        int seqLen = line.GetValue(_seqLen);
        int seed = line.GetValue(_seed);
        var recipe = line.GetValue(_recipe) == CarveRecipe.Authors ? CarveOptions.Authors(layout) : new CarveOptions { Layout = layout };
        T Given<T>(Option<T> option, T fromRecipe) => line.GetResult(option) is { Implicit: false } ? line.GetValue(option)! : fromRecipe;
        var options = recipe with
        {
            KAct = Given(_kAct, recipe.KAct),
            Score = Given(_score, recipe.Score),
            Iterations = Given(_iterations, recipe.Iterations),
            Routing = Given(_routing, recipe.Routing),
            RouterVectors = Given(_routerVectors, recipe.RouterVectors),
            NeuronWeighting = Given(_neuronWeighting, recipe.NeuronWeighting),
            DownFit = Given(_downFit, recipe.DownFit),
            DownFitRidge = Given(_downFitRidge, recipe.DownFitRidge),
        };
        bool json = line.GetValue(CommonOptions.JsonOption);
        bool streaming = line.GetValue(_streaming);
        bool resume = line.GetValue(_resume);
        var weights = CommonOptions.Weights(line) ?? Modeling.Weights.WeightFormat.Fp32;
        var device = CommonOptions.Device(line);
        int threads = CommonOptions.Threads(line);
        if (resume && !streaming)
            throw new UsageException("--resume continues an interrupted --streaming carve; add --streaming (an in-memory carve keeps no progress to resume).");
        if (streaming && weights.Kind != Modeling.Weights.WeightKind.Fp32)
            throw new UsageException($"--streaming writes fp32 weights; drop --weights {weights} and load the carved folder with `cmoe eval|score|bench --weights {weights}` (it converts tensor by tensor while loading), or carve without --streaming.");
        if (weights.Kind != Modeling.Weights.WeightKind.Fp32 && device.type != TorchSharp.DeviceType.CPU)
            throw new UsageException($"--weights {weights} is converted on the CPU; drop --device {device.type.ToString().ToLowerInvariant()} or write fp32.");

        var config = CommonOptions.DenseConfig(modelDir, "carve");
        options.Validate(config.IntermediateSize);   // fail on a bad layout before any heavy work
        string text = CommonOptions.ReadText(calibrationPath, "Calibration");

        var tokenizer = TokenizerLoader.FromFolder(modelDir);
        var windows = CalibrationSampler.Sample(tokenizer.Encode(text, addBos: true), samples, seqLen, seed);
        using var calibration = tensor(windows);
        var provenance = new JsonObject
        {
            ["calibration"] = Path.GetFileName(calibrationPath),
            ["samples"] = samples,
            ["seq_len"] = seqLen,
            ["seed"] = seed,
            ["k_act"] = options.KAct,
            ["score"] = options.Score.ToString().ToLowerInvariant(),
            ["iterations"] = options.Iterations,
            ["routing"] = options.Routing.ToString().ToLowerInvariant(),
            ["router_vectors"] = options.RouterVectors.ToString().ToLowerInvariant(),
            ["neuron_weighting"] = options.NeuronWeighting.ToString().ToLowerInvariant(),
            ["down_fit"] = options.DownFit.ToString().ToLowerInvariant(),
        };
        if (options.DownFit != DownProjectionFit.None) provenance["down_fit_ridge"] = options.DownFitRidge;
        if (weights.Kind != Modeling.Weights.WeightKind.Fp32) provenance["weights"] = weights.ToString();
        CarveReport report;
        bool resumed = false;
        using (var bar = Terminal.Progress($"carve {layout}"))
        {
            var progress = new Progress<(int Done, int Total)>(p => bar.Report((double)p.Done / p.Total, $"layer {p.Done}/{p.Total}"));
            if (streaming)
            {
                if (device.type != TorchSharp.DeviceType.CPU) throw new ArgumentException("--streaming carves on the CPU; drop --device cuda.");
                resumed = resume && StreamingCarver.HasInterruptedCarve(outDir);
                if (resume && !resumed)
                    Console.Error.WriteLine($"cmoe carve: nothing to resume in '{StreamingCarver.StagingFolder(outDir)}'; carving from the first layer");
                report = StreamingCarver.Carve(modelDir, calibration, options, outDir, provenance, progress, cancel, resume);
            }
            else
            {
                using var model = ModelFolder.Load(modelDir, Modeling.Weights.WeightFormat.Fp32, device);
                report = MoeCarver.Carve(model, calibration, options, progress, cancel);
                provenance["seconds"] = Math.Round(report.Seconds, 3);
                using var stored = weights.Kind == Modeling.Weights.WeightKind.Fp32 ? null : Modeling.Weights.ModelConversion.Convert(model, weights);
                CarvedFolder.Save(stored ?? model, modelDir, outDir, layout.ToString(), provenance);
            }
        }

        if (json)
        {
            var layers = new JsonArray();
            foreach (var l in report.Layers)
                layers.Add(new JsonObject
                {
                    ["layer"] = l.Layer,
                    ["profile_seconds"] = Math.Round(l.ProfileSeconds, 4),
                    ["partition_seconds"] = Math.Round(l.PartitionSeconds, 4),
                    ["assignment_cost"] = l.AssignmentCost,
                });
            Terminal.WriteJson(new JsonObject
            {
                ["layout"] = layout.ToString(),
                ["seconds"] = Math.Round(report.Seconds, 3),
                ["layers"] = layers,
                ["active_ffn_fraction"] = report.ActiveFfnFraction,
                ["out"] = Path.GetFullPath(outDir),
                ["threads"] = threads,
                ["device"] = device.ToString(),
                ["options"] = provenance,
                ["streaming"] = streaming,
                ["resumed"] = resumed,
                ["weights"] = weights.ToString(),
                ["peak_rss_mb"] = ProcessMemory.PeakRssMb(),
            });
        }
        else
        {
            Console.WriteLine($"carved {config.NumLayers} layers to {layout} ({report.ActiveFfnFraction:P0} of FFN active) in {report.Seconds:F1} s -> {outDir} ({weights} weights)");
        }
        return 0;
    }

}

/// <summary>The base set of carving knobs (<c>--recipe</c>).</summary>
public enum CarveRecipe
{
    /// <summary>This library's defaults (<see cref="CarveOptions"/>).</summary>
    Default,
    /// <summary>The authors' procedure (<see cref="CarveOptions.Authors"/>).</summary>
    Authors,
}
