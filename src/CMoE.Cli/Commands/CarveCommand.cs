using System.Text.Json.Nodes;
using CMoE.Carving;
using CMoE.Modeling.IO;
using CMoE.Modeling.Tokenization;
using static TorchSharp.torch;

namespace CMoE.Cli.Commands;

/// <summary><c>cmoe carve</c>: turn a dense model's FFNs into shared + routed experts.</summary>
internal sealed class CarveCommand : ICommand
{
    public string Summary => "carve a dense model into a Mixture-of-Experts (training-free)";

    public string Usage => $"""
        cmoe carve --model <hf-folder> --calibration <text> --layout S2A2E16 --out <folder>
                   [--samples 8] [--seq-len 512] [--k-act 10] [--score cosine|raw] [--iterations 1]
                   [--routing topk|threshold] [--router-vectors representative|mean] [--neuron-weighting none|downnorm]
                   [--seed 0] [--streaming [--resume]] {CommonOptions.WeightsUsage} {CommonOptions.ThreadsUsage}
                   {CommonOptions.DeviceUsage} [--json]
          Calibration windows = `samples` random windows of seq-len tokens from BOS + encode(file), drawn with seed.
          Layout S{"{s}"}A{"{a}"}E{"{e}"}: e experts of d_h/e neurons, s shared (always on), a routed active per token.
          --routing threshold: dynamic-K, every routed expert with p + b >= tau, tau per layer calibrated so the mean count on
          the calibration tokens is a (per-token count varies; not with --streaming). --router-vectors mean: router rows =
          mean of each expert's normalised gate/up rows instead of its representative neuron's. --neuron-weighting downnorm:
          neuron scores times ||W_down[:, i]|| before the top-k-act markers. Defaults are the authors' procedure.
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

    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "json", "verbose", "streaming", "resume" };

    public int Run(CommandLine line, CancellationToken cancel)
    {
        string modelDir = line.Required("model", "hf-folder");
        string calibrationPath = line.Required("calibration", "text");
        var layout = MoeLayout.Parse(line.Required("layout", "S2A2E16"));
        string outDir = line.Required("out", "folder");
        int samples = line.Int("samples", 8, min: 1);
        int seqLen = line.Int("seq-len", 512, min: 2);
        int seed = line.Int("seed", 0);
        var options = new CarveOptions
        {
            Layout = layout,
            KAct = line.Int("k-act", 10, min: 1),
            Score = line.Choice("score", ActivationScore.Cosine),
            Iterations = line.Int("iterations", 1, min: 1),
            Routing = line.Choice("routing", RouterSelection.TopK),
            RouterVectors = line.Choice("router-vectors", RouterVectors.Representative),
            NeuronWeighting = line.Choice("neuron-weighting", NeuronWeighting.None),
        };
        bool json = line.Flag("json");
        bool streaming = line.Flag("streaming");
        bool resume = line.Flag("resume");
        var weights = CommonOptions.Weights(line) ?? Modeling.Weights.WeightFormat.Fp32;
        var device = CommonOptions.Device(line);
        int threads = CommonOptions.Threads(line);
        line.RejectUnknown();
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
        };
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
