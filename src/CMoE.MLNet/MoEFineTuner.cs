using CMoE.MLNet.Persistence;
using CMoE.MLNet.Scoring;
using CMoE.Modeling;
using Microsoft.ML;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace CMoE.MLNet;

/// <summary>
/// Optional recovery fine-tuning of a carved model (method section 5) on token windows sampled from the input's
/// text column. Chain it after a carving or router stage (or pass the carved transformer). Created by
/// <c>mlContext.Transforms.FineTuneMoE(...)</c>.
/// </summary>
/// <remarks>
/// The training core is <c>CMoE.Training.MoEFineTuner</c> (LoRA on attention and experts, AdamW, the router
/// scale u, bias balancing while training; adapters merged at the end), plugged in through an internal seam.
/// Fine-tuning on the CPU is slow: keep <see cref="CalibrationOptions.CalibrationSamples"/> small or run on a GPU.
/// </remarks>
public sealed class MoEFineTuner : LanguageModelEstimatorBase<MoEFineTuneTransformer>
{
    /// <summary>The message <see cref="Fit"/> throws with while no training core is plugged in.</summary>
    internal const string NotAvailable = "fine-tuning core not available in this build";

    private readonly Options _options;
    private readonly LanguageModelTransformerBase? _source;
    private readonly IFineTuneCore? _core;

    /// <summary>Options of <see cref="MoEFineTuner"/> (defaults: the paper's recipe, method section 5).</summary>
    public sealed class Options : CalibrationOptions
    {
        /// <summary>Passes over the training windows. Default 1.</summary>
        public int Epochs { get; set; } = 1;

        /// <summary>Windows per optimizer step. Default 2.</summary>
        public int TrainBatchSize { get; set; } = 2;

        /// <summary>Learning rate of the LoRA adapters (Adam, betas 0.9/0.95). Default 5.65e-5.</summary>
        public double LearningRate { get; set; } = 5.65e-5;

        /// <summary>Learning rate of the router's gate scale u. Default 1e-3.</summary>
        public double RouterScaleLearningRate { get; set; } = 1e-3;

        /// <summary>LoRA rank. Default 8.</summary>
        public int LoraRank { get; set; } = 8;

        /// <summary>LoRA alpha. Default 32.</summary>
        public double LoraAlpha { get; set; } = 32;

        /// <summary>LoRA dropout. Default 0.1.</summary>
        public double LoraDropout { get; set; } = 0.1;

        /// <summary>Router bias step gamma during training (0 disables balancing). Default 1e-3.</summary>
        public float BiasStep { get; set; } = 1e-3f;
    }

    internal MoEFineTuner(IHostEnvironment env, Options options, LanguageModelTransformerBase? source = null, IFineTuneCore? core = null)
        : base(env, nameof(MoEFineTuner), options)
    {
        if (options.Epochs < 1) throw new ArgumentException($"Epochs must be at least 1; got {options.Epochs}.", nameof(options));
        if (options.TrainBatchSize < 1) throw new ArgumentException($"TrainBatchSize must be at least 1; got {options.TrainBatchSize}.", nameof(options));
        if (!(options.LearningRate > 0)) throw new ArgumentException($"LearningRate must be positive; got {options.LearningRate}.", nameof(options));
        if (options.LoraRank < 1) throw new ArgumentException($"LoraRank must be at least 1; got {options.LoraRank}.", nameof(options));
        options.ValidateCalibration();
        _options = options;
        _source = source;
        _core = core ?? FineTuneCores.Default;
    }

    /// <summary>Whether a training core is available in this build (false: <see cref="Fit"/> throws).</summary>
    public static bool IsAvailable => FineTuneCores.Default is not null;

    /// <summary>Fine-tunes a copy of the upstream carved model on windows from the text column.</summary>
    /// <param name="input">The data; its text column is the training text.</param>
    /// <exception cref="NotSupportedException">No training core is plugged in.</exception>
    public override MoEFineTuneTransformer Fit(IDataView input)
    {
        CheckInput(input);
        if (_core is null) throw new NotSupportedException(NotAvailable);
        var source = _source ?? Upstream<LanguageModelTransformerBase>(input)
            ?? throw new InvalidOperationException($"{Name} has no carved model: chain it after mlContext.Transforms.CarveExperts(...) or pass a carved transformer.");
        if (!source.IsCarved)
            throw new InvalidOperationException($"{Name}: the upstream {source.GetType().Name} holds a dense model; chain it after a carving stage.");
        source.Handle.RequireFp32(Name);
        var handle = source.Handle.Clone();
        try
        {
            Train(_core, handle, input, _options, Name);
            handle.UseWeights(Weights);
            return new MoEFineTuneTransformer(Env, handle, Settings);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Samples windows from <paramref name="input"/> and runs <paramref name="core"/> on the model of <paramref name="handle"/>.</summary>
    internal static void Train(IFineTuneCore core, LanguageModelHandle handle, IDataView input, Options options, string stage)
    {
        using var ids = tensor(CalibrationData.Windows(input, handle.Tokenizer, options, stage));   // [samples, length]
        core.Train(handle.Model, ids, options, MoECarverEstimator.Progress(options, "fine-tune"), options.Cancellation);
        handle.MarkChanged(handle.Layout);
    }
}

/// <summary>
/// The seam for the training core: fine-tunes a carved model in place (LoRA merged back into the weights
/// before returning) on token windows [samples, length].
/// </summary>
internal interface IFineTuneCore
{
    /// <summary>Trains the carved model in place.</summary>
    void Train(LlamaForCausalLM model, Tensor windows, MoEFineTuner.Options options, IProgress<(int Done, int Total)>? progress, CancellationToken cancel);
}

/// <summary>Where the training core is plugged in.</summary>
internal static class FineTuneCores
{
    /// <summary>The core used by <see cref="MoEFineTuner"/> when none is passed; null = not available.</summary>
    public static IFineTuneCore? Default { get; set; } = new Scoring.TrainingFineTuneCore();
}

/// <summary>A fine-tuned carved model that scores rows; saved with the model zip.</summary>
public sealed class MoEFineTuneTransformer : LanguageModelTransformerBase, ILoadableTransformer<MoEFineTuneTransformer>
{
    private static readonly ModelFormat FormatInfo = new("CMoEMoEFineTune", "CMOEFTTR", Version: 1);

    internal MoEFineTuneTransformer(IHostEnvironment env, LanguageModelHandle handle, ScoringSettings settings)
        : base(env, nameof(MoEFineTuneTransformer), handle, settings) { }

    static ModelFormat ILoadableTransformer<MoEFineTuneTransformer>.Format => FormatInfo;

    private protected override ModelFormat SaveFormat => FormatInfo;

    static MoEFineTuneTransformer ILoadableTransformer<MoEFineTuneTransformer>.Load(IHostEnvironment env, ModelPayloadReader payload)
    {
        var (handle, settings) = ReadModel(payload);
        return new MoEFineTuneTransformer(env, handle, settings);
    }
}
