namespace CMoE.Training;

/// <summary>Which final hidden state(s) the classification head reads.</summary>
public enum ClassifierPooling
{
    /// <summary>The last real token's state (under causal attention the only one that has seen the whole text).</summary>
    LastToken,
    /// <summary>The mean of the real tokens' states (padding excluded).</summary>
    Mean,
}

/// <summary>Knobs of <see cref="ClassifierFineTuner"/> (sequence classification: a linear head on a pooled state, LoRA or full on the backbone).</summary>
public sealed record ClassifierOptions
{
    /// <summary>LoRA adapters on attention and FFN/experts (default) or full training of the same matrices.</summary>
    public FineTuneMode Mode { get; init; } = FineTuneMode.Lora;

    /// <summary>LoRA rank r (default 8).</summary>
    public int LoraRank { get; init; } = 8;

    /// <summary>LoRA alpha; the low-rank term is scaled by alpha / r (default 16).</summary>
    public double LoraAlpha { get; init; } = 16;

    /// <summary>Dropout on the LoRA input (default 0.05).</summary>
    public double LoraDropout { get; init; } = 0.05;

    /// <summary>Peak learning rate of the adapters (or, in full mode, the weights); default 1e-3 (LoRA). Use ~5e-5 in full mode.</summary>
    public double LearningRate { get; init; } = 1e-3;

    /// <summary>Peak learning rate of the classification head (default 2e-3).</summary>
    public double HeadLearningRate { get; init; } = 2e-3;

    /// <summary>Learning rate of the router scale u of carved models (default 1e-3).</summary>
    public double RouterLearningRate { get; init; } = 1e-3;

    /// <summary>Whether to train the router scale u of carved models (default true, as <see cref="MoEFineTuner"/>).</summary>
    public bool TrainRouterScale { get; init; } = true;

    /// <summary>gamma of the auxiliary-loss-free balancing of carved models (default 1e-3; 0 disables).</summary>
    public double BiasSpeed { get; init; } = 1e-3;

    /// <summary>AdamW weight decay of the adapters and head (default 0.01).</summary>
    public double WeightDecay { get; init; } = 0.01;

    /// <summary>Gradient clipping: maximum global L2 norm (default 1; 0 disables).</summary>
    public double MaxGradNorm { get; init; } = 1.0;

    /// <summary>Warm-up as a fraction of all steps (default 0.06), then linear decay to 0.</summary>
    public double WarmupFraction { get; init; } = 0.06;

    /// <summary>Passes over the training rows (default 1).</summary>
    public int Epochs { get; init; } = 1;

    /// <summary>Rows per optimiser step (default 16).</summary>
    public int BatchSize { get; init; } = 16;

    /// <summary>Stop after this many steps in all (0 = no limit: <see cref="Epochs"/> passes).</summary>
    public int MaxSteps { get; init; }

    /// <summary>
    /// Head input (default <see cref="ClassifierPooling.Mean"/>: on SpamScoring's 2,000-mail subset, one epoch, the carved model
    /// reached validation loss 0.175 with mean pooling and 0.191 with the last token, accuracy within noise; docs/benchmarks.md).
    /// </summary>
    public ClassifierPooling Pooling { get; init; } = ClassifierPooling.Mean;

    /// <summary>Weight each class's loss by n / (classes x n_class) (default false).</summary>
    public bool ClassWeighting { get; init; }

    /// <summary>Fraction of the rows held out to validate (early stopping, best state kept); 0 = none (default 0.1).</summary>
    public double ValidationFraction { get; init; } = 0.1;

    /// <summary>Validation passes without a lower validation loss before training stops (default 2; 0 = never stop early).</summary>
    public int Patience { get; init; } = 2;

    /// <summary>Steps between validation passes (0 = once per epoch, default).</summary>
    public int ValidationEvery { get; init; }

    /// <summary>Seeds the head and LoRA initialisation, the validation split, the row order and the dropout masks (default 0).</summary>
    public int Seed { get; init; }

    /// <summary>Checks the knobs; each message names the option and its range.</summary>
    public void Validate()
    {
        if (LoraRank < 1) throw new ArgumentException($"LoRA rank must be at least 1 (got {LoraRank}).");
        if (!(LoraAlpha > 0)) throw new ArgumentException($"LoRA alpha must be positive (got {LoraAlpha}).");
        if (LoraDropout is < 0 or >= 1) throw new ArgumentException($"LoRA dropout must be in [0, 1) (got {LoraDropout}).");
        if (!(LearningRate > 0) || !(HeadLearningRate > 0)) throw new ArgumentException($"Learning rates must be positive (got {LearningRate} and head {HeadLearningRate}).");
        if (RouterLearningRate < 0 || BiasSpeed < 0 || WeightDecay < 0 || MaxGradNorm < 0) throw new ArgumentException("Router learning rate, bias speed, weight decay and max grad norm must not be negative.");
        if (WarmupFraction is < 0 or >= 1) throw new ArgumentException($"Warm-up fraction must be in [0, 1) (got {WarmupFraction}).");
        if (Epochs < 1) throw new ArgumentException($"Epochs must be at least 1 (got {Epochs}).");
        if (BatchSize < 1) throw new ArgumentException($"Batch size must be at least 1 (got {BatchSize}).");
        if (MaxSteps < 0 || Patience < 0 || ValidationEvery < 0) throw new ArgumentException("Max steps, patience and validation interval must not be negative.");
        if (ValidationFraction is < 0 or >= 1) throw new ArgumentException($"Validation fraction must be in [0, 1) (got {ValidationFraction}).");
        if (!Enum.IsDefined(Pooling)) throw new ArgumentException($"Pooling {Pooling} is not a known ClassifierPooling.");
    }
}

/// <summary>One progress report of a classifier fine-tune.</summary>
/// <param name="Step">Steps done.</param>
/// <param name="Steps">Steps planned.</param>
/// <param name="Loss">Training loss of the last step (cross-entropy, nats).</param>
/// <param name="TokensPerSecond">Real (unpadded) training tokens per second so far.</param>
/// <param name="Eta">Estimated time left.</param>
/// <param name="ValidationLoss">Loss on the validation rows at the last validation pass (NaN before the first).</param>
/// <param name="ValidationAccuracy">Accuracy on the validation rows at the last validation pass (NaN before the first).</param>
public sealed record ClassifierProgress(int Step, int Steps, double Loss, double TokensPerSecond, TimeSpan Eta, double ValidationLoss, double ValidationAccuracy);

/// <summary>The outcome of <see cref="ClassifierFineTuner.Train"/>.</summary>
/// <param name="Steps">Steps done.</param>
/// <param name="Seconds">Wall time of training (validation included).</param>
/// <param name="TokensPerSecond">Real training tokens per second.</param>
/// <param name="FinalLoss">Training loss of the last step.</param>
/// <param name="BestValidationLoss">Lowest validation loss (NaN without validation).</param>
/// <param name="BestValidationAccuracy">Validation accuracy at that pass (NaN without validation).</param>
/// <param name="BestStep">Step of the kept state (the last step without validation).</param>
/// <param name="StoppedEarly">Whether patience ran out before the planned steps.</param>
public sealed record ClassifierReport(int Steps, double Seconds, double TokensPerSecond, double FinalLoss, double BestValidationLoss,
    double BestValidationAccuracy, int BestStep, bool StoppedEarly);
