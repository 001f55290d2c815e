namespace CMoE.Training;

/// <summary>What fine-tuning trains.</summary>
public enum FineTuneMode
{
    /// <summary>LoRA adapters on q/k/v/o and on every expert's gate/up/down, plus the router scale u (method section 5).</summary>
    Lora,
    /// <summary>The same matrices trained directly (q/k/v/o, shared and routed experts, router G/U), plus u.</summary>
    Full,
}

/// <summary>The optimiser.</summary>
public enum FineTuneOptimizer
{
    /// <summary>AdamW (decoupled weight decay).</summary>
    AdamW,
    /// <summary>Adam (weight decay, if any, added to the gradient).</summary>
    Adam,
}

/// <summary>Knobs of <see cref="MoEFineTuner"/>; the defaults are the paper's (method section 5).</summary>
public sealed record FineTuneOptions
{
    /// <summary>LoRA (default) or full training of the same matrices.</summary>
    public FineTuneMode Mode { get; init; } = FineTuneMode.Lora;

    /// <summary>LoRA rank r (default 8).</summary>
    public int LoraRank { get; init; } = 8;

    /// <summary>LoRA alpha; the low-rank term is scaled by alpha / r (default 32).</summary>
    public double LoraAlpha { get; init; } = 32;

    /// <summary>Dropout on the LoRA input (default 0.1).</summary>
    public double LoraDropout { get; init; } = 0.1;

    /// <summary>Peak learning rate of the adapters (or, in full mode, the weights); default 5.65e-5.</summary>
    public double LearningRate { get; init; } = 5.65e-5;

    /// <summary>Learning rate of the router scale u (default 1e-3).</summary>
    public double RouterLearningRate { get; init; } = 1e-3;

    /// <summary>gamma of the auxiliary-loss-free balancing: b_j moves by this much per batch (default 1e-3; 0 disables).</summary>
    public double BiasSpeed { get; init; } = 1e-3;

    /// <summary>AdamW (default) or Adam.</summary>
    public FineTuneOptimizer Optimizer { get; init; } = FineTuneOptimizer.AdamW;

    /// <summary>Adam beta1 (default 0.9).</summary>
    public double Beta1 { get; init; } = 0.9;

    /// <summary>Adam beta2 (default 0.95).</summary>
    public double Beta2 { get; init; } = 0.95;

    /// <summary>Weight decay (default 0).</summary>
    public double WeightDecay { get; init; }

    /// <summary>Gradient clipping: maximum global L2 norm (default 1; 0 disables).</summary>
    public double MaxGradNorm { get; init; } = 1.0;

    /// <summary>Linear warm-up steps from 0 to the peak learning rates (default 0).</summary>
    public int WarmupSteps { get; init; }

    /// <summary>After warm-up, decay the learning rates linearly to 0 at the last step (default true); else constant.</summary>
    public bool LinearDecay { get; init; } = true;

    /// <summary>Windows per optimiser step (default 2).</summary>
    public int BatchSize { get; init; } = 2;

    /// <summary>Stop after this many steps (0 = one epoch over the windows).</summary>
    public int MaxSteps { get; init; }

    /// <summary>Seeds the LoRA initialisation, the window order and the per-step dropout masks (default 0).</summary>
    public int Seed { get; init; }

    /// <summary>Whether to train the router scale u (default true; the authors' PEFT wrapper likely froze it).</summary>
    public bool TrainRouterScale { get; init; } = true;

    /// <summary>Checks the knobs.</summary>
    public void Validate()
    {
        if (LoraRank < 1) throw new ArgumentException($"LoRA rank must be at least 1 (got {LoraRank}).");
        if (LoraAlpha <= 0) throw new ArgumentException($"LoRA alpha must be positive (got {LoraAlpha}).");
        if (LoraDropout is < 0 or >= 1) throw new ArgumentException($"LoRA dropout must be in [0, 1) (got {LoraDropout}).");
        if (LearningRate < 0 || RouterLearningRate < 0) throw new ArgumentException("Learning rates must not be negative.");
        if (BiasSpeed < 0) throw new ArgumentException($"bias speed must not be negative (got {BiasSpeed}).");
        if (BatchSize < 1) throw new ArgumentException($"batch must be at least 1 (got {BatchSize}).");
        if (WarmupSteps < 0 || MaxSteps < 0) throw new ArgumentException("warm-up and max steps must not be negative.");
        if (MaxGradNorm < 0) throw new ArgumentException($"max grad norm must not be negative (got {MaxGradNorm}).");
    }
}

/// <summary>One progress report of a fine-tune.</summary>
/// <param name="Step">Steps done.</param>
/// <param name="Steps">Steps in the run.</param>
/// <param name="Loss">Causal-LM loss of the last step (nats per token).</param>
/// <param name="TokensPerSecond">Training throughput since this run started (or resumed).</param>
/// <param name="Eta">Estimated time left.</param>
public sealed record FineTuneProgress(int Step, int Steps, double Loss, double TokensPerSecond, TimeSpan Eta);

/// <summary>The outcome of <see cref="MoEFineTuner.Train"/>.</summary>
/// <param name="Steps">Steps done in total (including steps restored from a checkpoint).</param>
/// <param name="StepsThisRun">Steps done by this call.</param>
/// <param name="Seconds">Wall time of this call.</param>
/// <param name="TokensPerSecond">Tokens trained per second in this call.</param>
/// <param name="FirstLoss">Loss of the first step of this call.</param>
/// <param name="FinalLoss">Loss of the last step.</param>
/// <param name="Losses">Loss of every step of this call.</param>
/// <param name="RouterScaleGradNorm">L2 norm of the router scales' gradient (all layers) at the first step of this call; 0 when u is frozen.</param>
public sealed record FineTuneReport(int Steps, int StepsThisRun, double Seconds, double TokensPerSecond, double FirstLoss, double FinalLoss,
    IReadOnlyList<double> Losses, double RouterScaleGradNorm);
