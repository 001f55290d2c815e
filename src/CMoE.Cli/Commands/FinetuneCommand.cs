using System.Globalization;
using System.Text.Json.Nodes;
using CMoE.Carving;
using CMoE.Modeling.IO;
using CMoE.Modeling.Tokenization;
using CMoE.Training;
using static TorchSharp.torch;

namespace CMoE.Cli.Commands;

/// <summary><c>cmoe finetune</c>: recover a carved model's quality with LoRA (or full) fine-tuning.</summary>
internal sealed class FinetuneCommand : ICommand
{
    public string Summary => "fine-tune a carved model (LoRA or full) to recover quality";

    public string Usage => $"""
        cmoe finetune --model <carved-folder> --data <text> --out <folder>
                      [--samples 2048] [--seq-len 512] [--batch 2] [--max-steps 0] [--mode lora|full]
                      [--lora-rank 8] [--lora-alpha 32] [--lora-dropout 0.1] [--lr 5.65e-5] [--router-lr 1e-3]
                      [--bias-speed 1e-3] [--optimizer adamw|adam] [--weight-decay 0] [--max-grad-norm 1]
                      [--warmup 0] [--constant-lr] [--keep-adapters] [--checkpoint <folder>] [--checkpoint-every 0]
                      [--resume] [--seed 0] [--dtype fp32|bf16] {CommonOptions.ThreadsUsage} {CommonOptions.DeviceUsage} [--json]
          Training windows = `samples` random windows of seq-len tokens from BOS + encode(file), drawn with seed;
          one epoch, `batch` windows per step. The output is a carved folder (written atomically; the input is
          untouched) with the LoRA adapters merged, or with --keep-adapters the unmerged weights plus
          adapters.safetensors. --checkpoint writes adapters/weights, router u and b and the step (not Adam's moments)
          every N steps and on Ctrl+C; --resume continues from it with the same options.
          --dtype bf16 (LoRA only; meant for GPUs): the frozen base weights are held in bf16 while training, the adapters,
          u, b and the loss stay fp32, and the adapters are merged into the fp32 weights at the end.
        """;

    public IReadOnlySet<string> Flags { get; } = new HashSet<string> { "json", "verbose", "keep-adapters", "resume", "constant-lr" };

    public int Run(CommandLine line, CancellationToken cancel)
    {
        string modelDir = line.Required("model", "carved-folder");
        string dataPath = line.Required("data", "text");
        string outDir = line.Required("out", "folder");
        int samples = line.Int("samples", 2048, min: 1);
        int seqLen = line.Int("seq-len", 512, min: 2);
        var options = new FineTuneOptions
        {
            Mode = line.Choice("mode", FineTuneMode.Lora),
            BatchSize = line.Int("batch", 2, min: 1),
            MaxSteps = line.Int("max-steps", 0, min: 0),
            LoraRank = line.Int("lora-rank", 8, min: 1),
            LoraAlpha = line.Double("lora-alpha", 32, min: 0),
            LoraDropout = line.Double("lora-dropout", 0.1, min: 0),
            LearningRate = line.Double("lr", 5.65e-5, min: 0),
            RouterLearningRate = line.Double("router-lr", 1e-3, min: 0),
            BiasSpeed = line.Double("bias-speed", 1e-3, min: 0),
            Optimizer = line.Choice("optimizer", FineTuneOptimizer.AdamW),
            WeightDecay = line.Double("weight-decay", 0, min: 0),
            MaxGradNorm = line.Double("max-grad-norm", 1, min: 0),
            WarmupSteps = line.Int("warmup", 0, min: 0),
            LinearDecay = !line.Flag("constant-lr"),
            Seed = line.Int("seed", 0),
        };
        bool keepAdapters = line.Flag("keep-adapters");
        string? checkpoint = line.Optional("checkpoint");
        int checkpointEvery = line.Int("checkpoint-every", 0, min: 0);
        bool resume = line.Flag("resume");
        bool json = line.Flag("json");
        var precision = line.Choice("dtype", TrainingPrecision.Fp32);
        var device = CommonOptions.Device(line);
        int threads = CommonOptions.Threads(line);
        line.RejectUnknown();

        options.Validate();
        if (resume && checkpoint is null) throw new UsageException("--resume needs --checkpoint <folder>");
        if (precision == TrainingPrecision.Bf16 && options.Mode != FineTuneMode.Lora)
            throw new UsageException("--dtype bf16 trains LoRA adapters over frozen bf16 weights; full mode updates the weights themselves and needs --dtype fp32.");
        if (!ModelFolder.IsCarved(modelDir))
            throw new ArgumentException($"'{modelDir}' is not a carved folder; run 'cmoe carve' first.");
        if (Path.GetFullPath(modelDir).TrimEnd('/') == Path.GetFullPath(outDir).TrimEnd('/'))
            throw new ArgumentException("--out must differ from --model; the input folder is never overwritten.");
        if (!File.Exists(dataPath)) throw new FileNotFoundException($"Training text '{dataPath}' does not exist.");
        string text = File.ReadAllText(dataPath);
        if (text.Length == 0) throw new ArgumentException($"Training text '{dataPath}' is empty.");

        var tokenizer = TokenizerLoader.FromFolder(modelDir);
        var windows = CalibrationSampler.Sample(tokenizer.Encode(text, addBos: true), samples, seqLen, options.Seed);
        var dtype = precision == TrainingPrecision.Bf16 ? ScalarType.BFloat16 : ScalarType.Float32;
        using var trained = ModelFolder.Load(modelDir, dtype, device);
        using var ids = tensor(windows);
        using var tuner = new MoEFineTuner(trained, options);
        if (resume) tuner.LoadCheckpoint(checkpoint!);
        FineTuneReport report;
        using (var bar = Terminal.Progress($"finetune {options.Mode.ToString().ToLowerInvariant()}"))
            report = tuner.Train(ids, new Progress<FineTuneProgress>(p => bar.Report((double)p.Step / p.Steps,
                $"step {p.Step}/{p.Steps} loss {p.Loss:F3} {p.TokensPerSecond:F0} tok/s ETA {(int)p.Eta.TotalHours}:{p.Eta:mm\\:ss}")), cancel, checkpoint, checkpointEvery);
        // bf16: carry the fp32 adapters, u and b over to an fp32 copy of the model and merge there (no bf16 rounding of the result).
        using var fp32Copy = precision == TrainingPrecision.Bf16 ? ModelFolder.Load(modelDir, device: device) : null;
        using var fp32Tuner = fp32Copy is null ? null : new MoEFineTuner(fp32Copy, options);
        var (model, output) = (fp32Copy ?? trained, fp32Tuner ?? tuner);
        if (fp32Tuner is not null) tuner.CopyTrainedStateTo(fp32Tuner);
        output.Finish(keepAdapters);

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(modelDir, "config.json")))!.AsObject();
        var cmoe = config["cmoe"]!.AsObject();
        var provenance = cmoe["carving"]?.DeepClone().AsObject() ?? new JsonObject();
        var finetune = new JsonObject
        {
            ["source"] = Path.GetFullPath(modelDir),
            ["data"] = Path.GetFileName(dataPath),
            ["samples"] = samples,
            ["seq_len"] = seqLen,
            ["mode"] = options.Mode.ToString().ToLowerInvariant(),
            ["lora_rank"] = options.LoraRank,
            ["lora_alpha"] = options.LoraAlpha,
            ["lora_dropout"] = options.LoraDropout,
            ["lr"] = options.LearningRate,
            ["router_lr"] = options.RouterLearningRate,
            ["bias_speed"] = options.BiasSpeed,
            ["optimizer"] = options.Optimizer.ToString().ToLowerInvariant(),
            ["batch"] = options.BatchSize,
            ["steps"] = report.Steps,
            ["seed"] = options.Seed,
            ["final_loss"] = report.FinalLoss,
            ["adapters"] = keepAdapters && options.Mode == FineTuneMode.Lora ? "adapters.safetensors (not merged)" : "merged",
            ["dtype"] = precision.ToString().ToLowerInvariant(),
        };
        provenance["finetune"] = finetune;
        CarvedFolder.Save(model, modelDir, outDir, cmoe["layout"]!.GetValue<string>(), provenance,
            keepAdapters ? dir => SafeTensorsWriter.Write(Path.Combine(dir, "adapters.safetensors"), output.AdapterState(),
                new Dictionary<string, string> { ["lora_rank"] = options.LoraRank.ToString(CultureInfo.InvariantCulture), ["lora_alpha"] = options.LoraAlpha.ToString(CultureInfo.InvariantCulture) }) : null);

        if (json)
            Terminal.WriteJson(new JsonObject
            {
                ["seconds"] = Math.Round(report.Seconds, 3),
                ["tokens_per_second"] = Math.Round(report.TokensPerSecond, 2),
                ["final_loss"] = report.FinalLoss,
                ["first_loss"] = report.FirstLoss,
                ["steps"] = report.Steps,
                ["device"] = device.ToString(),
                ["threads"] = threads,
                ["trainable_parameters"] = tuner.TrainableParameters,
                ["router_scale_grad_norm"] = report.RouterScaleGradNorm,
                ["out"] = Path.GetFullPath(outDir),
                ["options"] = finetune.DeepClone(),
            });
        else
            Console.WriteLine($"fine-tuned {report.Steps} steps ({options.Mode}) in {report.Seconds:F1} s, {report.TokensPerSecond:F0} tok/s, loss {report.FirstLoss:F3} -> {report.FinalLoss:F3}, {tuner.TrainableParameters:N0} trainable -> {outDir}");
        return 0;
    }
}

/// <summary>What the base weights are held in while fine-tuning (<c>--dtype</c>).</summary>
internal enum TrainingPrecision
{
    /// <summary>fp32 everywhere (default).</summary>
    Fp32,
    /// <summary>Frozen base weights in bf16; adapters, u, b and the loss in fp32; merged into fp32 weights.</summary>
    Bf16,
}
