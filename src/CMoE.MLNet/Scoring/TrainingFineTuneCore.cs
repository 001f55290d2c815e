using CMoE.Modeling;
using CMoE.Training;
using static TorchSharp.torch;

namespace CMoE.MLNet.Scoring;

/// <summary>
/// The fine-tuning core behind <see cref="MoEFineTuner"/>: maps the estimator's options onto
/// <see cref="FineTuneOptions"/> and runs <see cref="Training.MoEFineTuner"/> (LoRA on attention and experts,
/// the router scale u, loss-free bias balancing), merging the adapters into the weights before returning.
/// </summary>
internal sealed class TrainingFineTuneCore : IFineTuneCore
{
    public void Train(LlamaForCausalLM model, Tensor windows, MoEFineTuner.Options options,
        IProgress<(int Done, int Total)>? progress, CancellationToken cancel)
    {
        var settings = new FineTuneOptions
        {
            Mode = FineTuneMode.Lora,
            LoraRank = options.LoraRank,
            LoraAlpha = options.LoraAlpha,
            LoraDropout = options.LoraDropout,
            LearningRate = options.LearningRate,
            RouterLearningRate = options.RouterScaleLearningRate,
            BiasSpeed = options.BiasStep,
            BatchSize = options.TrainBatchSize,
            Seed = options.Seed,
        };
        settings.Validate();
        if (options.Epochs < 1) throw new ArgumentException($"Epochs must be at least 1 (got {options.Epochs}).");
        using var epochs = options.Epochs == 1 ? windows.alias() : windows.repeat(options.Epochs, 1);   // [epochs * samples, t]
        using var tuner = new Training.MoEFineTuner(model, settings);
        var relay = progress is null ? null : new Progress<FineTuneProgress>(p => progress.Report((p.Step, p.Steps)));
        tuner.Train(epochs, relay, cancel);
        tuner.Finish();
    }
}
