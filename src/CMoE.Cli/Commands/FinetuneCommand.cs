using System.CommandLine;
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
    private readonly Option<string> _model = CliOptions.Required("--model", "carved-folder", "the carved model to fine-tune (left untouched)");
    private readonly Option<string> _data = CliOptions.Required("--data", "text", "the training text");
    private readonly Option<string> _out = CliOptions.Required("--out", "folder", "the fine-tuned carved folder to write");
    private readonly Option<int> _samples = CliOptions.Int("--samples", 2048, "training windows", min: 1);
    private readonly Option<int> _seqLen = CliOptions.Int("--seq-len", 512, "tokens per window", min: 2);
    private readonly Option<FineTuneMode> _mode = CliOptions.Choice("--mode", FineTuneMode.Lora, "LoRA adapters on the experts, or full fine-tuning");
    private readonly Option<int> _batch = CliOptions.Int("--batch", 2, "windows per step", min: 1);
    private readonly Option<int> _maxSteps = CliOptions.Int("--max-steps", 0, "stop after this many steps (0 = one epoch)", min: 0);
    private readonly Option<int> _loraRank = CliOptions.Int("--lora-rank", 8, "LoRA rank", min: 1);
    private readonly Option<double> _loraAlpha = CliOptions.Double("--lora-alpha", 32, "LoRA alpha (scale alpha/rank)", min: 0);
    private readonly Option<double> _loraDropout = CliOptions.Double("--lora-dropout", 0.1, "dropout on the LoRA input", min: 0);
    private readonly Option<double> _lr = CliOptions.Double("--lr", 5.65e-5, "learning rate", min: 0);
    private readonly Option<double> _routerLr = CliOptions.Double("--router-lr", 1e-3, "learning rate of the router scale u", min: 0);
    private readonly Option<double> _biasSpeed = CliOptions.Double("--bias-speed", 1e-3, "speed of the load-balancing bias b", min: 0);
    private readonly Option<FineTuneOptimizer> _optimizer = CliOptions.Choice("--optimizer", FineTuneOptimizer.AdamW, "the optimizer");
    private readonly Option<double> _weightDecay = CliOptions.Double("--weight-decay", 0, "weight decay", min: 0);
    private readonly Option<double> _maxGradNorm = CliOptions.Double("--max-grad-norm", 1, "gradient clipping norm", min: 0);
    private readonly Option<int> _warmup = CliOptions.Int("--warmup", 0, "linear warm-up steps", min: 0);
    private readonly Option<bool> _constantLr = CliOptions.Flag("--constant-lr", "keep the learning rate constant (default: linear decay)");
    private readonly Option<int> _seed = CliOptions.Int("--seed", 0, "seed of the windows, dropout and initialisation");
    private readonly Option<bool> _keepAdapters = CliOptions.Flag("--keep-adapters", "write the unmerged weights plus adapters.safetensors");
    private readonly Option<string?> _checkpoint = CliOptions.Optional("--checkpoint", "folder", "checkpoint folder (written every N steps and on Ctrl+C)");
    private readonly Option<int> _checkpointEvery = CliOptions.Int("--checkpoint-every", 0, "steps between checkpoints (0 = only on Ctrl+C)", min: 0);
    private readonly Option<bool> _resume = CliOptions.Flag("--resume", "continue from --checkpoint with the same options");
    private readonly Option<TrainingPrecision> _dtype = CliOptions.Choice("--dtype", TrainingPrecision.Fp32, "precision of the frozen base weights while training (bf16: LoRA only)");

    public string Name => "finetune";

    public string Summary => "fine-tune a carved model (LoRA or full) to recover quality";

    public string Details => """
        Training windows = `samples` random windows of seq-len tokens from BOS + encode(file), drawn with seed;
        one epoch, `batch` windows per step. The output is a carved folder (written atomically; the input is
        untouched) with the LoRA adapters merged, or with --keep-adapters the unmerged weights plus
        adapters.safetensors. --checkpoint writes adapters/weights, router u and b and the step (not Adam's moments)
        every N steps and on Ctrl+C; --resume continues from it with the same options.
        --dtype bf16 (LoRA only; meant for GPUs): the frozen base weights are held in bf16 while training, the adapters,
        u, b and the loss stay fp32, and the adapters are merged into the fp32 weights at the end.
        """;

    public IEnumerable<Option> Options =>
    [
        _model, _data, _out, _samples, _seqLen, _mode, _batch, _maxSteps, _loraRank, _loraAlpha, _loraDropout, _lr, _routerLr,
        _biasSpeed, _optimizer, _weightDecay, _maxGradNorm, _warmup, _constantLr, _seed, _keepAdapters, _checkpoint,
        _checkpointEvery, _resume, _dtype, .. CommonOptions.Runtime, CommonOptions.JsonOption,
    ];

    public int Run(ParseResult line, CancellationToken cancel)
    {
        string modelDir = line.GetValue(_model)!;
        string dataPath = line.GetValue(_data)!;
        string outDir = line.GetValue(_out)!;
        int samples = line.GetValue(_samples);
        int seqLen = line.GetValue(_seqLen);
        var options = new FineTuneOptions
        {
            Mode = line.GetValue(_mode),
            BatchSize = line.GetValue(_batch),
            MaxSteps = line.GetValue(_maxSteps),
            LoraRank = line.GetValue(_loraRank),
            LoraAlpha = line.GetValue(_loraAlpha),
            LoraDropout = line.GetValue(_loraDropout),
            LearningRate = line.GetValue(_lr),
            RouterLearningRate = line.GetValue(_routerLr),
            BiasSpeed = line.GetValue(_biasSpeed),
            Optimizer = line.GetValue(_optimizer),
            WeightDecay = line.GetValue(_weightDecay),
            MaxGradNorm = line.GetValue(_maxGradNorm),
            WarmupSteps = line.GetValue(_warmup),
            LinearDecay = !line.GetValue(_constantLr),
            Seed = line.GetValue(_seed),
        };
        bool keepAdapters = line.GetValue(_keepAdapters);
        string? checkpoint = line.GetValue(_checkpoint);
        int checkpointEvery = line.GetValue(_checkpointEvery);
        bool resume = line.GetValue(_resume);
        bool json = line.GetValue(CommonOptions.JsonOption);
        var precision = line.GetValue(_dtype);
        var device = CommonOptions.Device(line);
        int threads = CommonOptions.Threads(line);

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
