using System.Diagnostics;
using CMoE.Modeling;
using CMoE.Modeling.MoE;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Training;

/// <summary>
/// Recovery fine-tuning of a carved model (method section 5): causal-LM loss on token windows, LoRA adapters
/// (or, in <see cref="FineTuneMode.Full"/> mode, the matrices themselves), the router scale u at its own learning
/// rate, and auxiliary-loss-free balancing (after every batch b_j -= gamma where expert j got more than the mean
/// number of tokens, += gamma where fewer). Device-agnostic: it trains wherever the model lives.
/// Usage: construct (adapters are attached), <see cref="Train"/>, then <see cref="Finish"/> (merges LoRA unless
/// asked not to and puts the model in eval mode). Dispose releases the adapters.
/// </summary>
public sealed class MoEFineTuner : IDisposable
{
    private readonly LlamaForCausalLM _model;
    private readonly FineTuneOptions _options;
    private readonly LoraAdapters? _lora;
    private readonly List<(string Name, Parameter Weight)> _fullWeights = [];
    private readonly List<MoeBlock> _blocks;
    private readonly Generator _rng;   // the run's own: LoRA init and dropout masks, untouched by other threads
    private bool _finished;

    /// <summary>Prepares <paramref name="model"/> (carved or dense) for fine-tuning with <paramref name="options"/>.</summary>
    public MoEFineTuner(LlamaForCausalLM model, FineTuneOptions options)
    {
        options.Validate();
        _model = model;
        _options = options;
        _blocks = model.Model.Layers.Select(l => l.Mlp).OfType<MoeBlock>().ToList();
        _rng = new Generator((ulong)options.Seed, model.Device);
        if (options.Mode == FineTuneMode.Lora)
            _lora = LoraAdapters.Attach(model, options.LoraRank, options.LoraAlpha, options.LoraDropout, _rng);
        else
            _fullWeights.AddRange(FullModeWeights(model));
        foreach (var (_, w) in _fullWeights) w.requires_grad = true;
        foreach (var u in RouterScales) u.requires_grad = options.TrainRouterScale;
    }

    /// <summary>Steps done so far (restored by <see cref="LoadCheckpoint"/>).</summary>
    public int CompletedSteps { get; private set; }

    /// <summary>Number of trained scalars (adapters or weights, plus u).</summary>
    public long TrainableParameters => MainParameters().Concat(ScaleParameters()).Sum(p => p.numel());

    private IEnumerable<Parameter> RouterScales => _blocks.Select(b => b.Router.Scale);

    private IEnumerable<Parameter> MainParameters() =>
        _lora is not null ? _lora.Parameters() : _fullWeights.Select(w => w.Weight);

    private IEnumerable<Parameter> ScaleParameters() => _options.TrainRouterScale ? RouterScales : [];

    /// <summary>Full mode: q/k/v/o, shared expert and stacked experts, router G/U (their state-dict keys and tensors).</summary>
    internal static IEnumerable<(string, Parameter)> FullModeWeights(LlamaForCausalLM model) =>
        model.named_parameters()
            .Where(p => p.name.Contains(".self_attn.") || p.name.Contains(".mlp.shared_expert.") || p.name.Contains(".mlp.experts.")
                        || p.name.EndsWith(".mlp.router.gate", StringComparison.Ordinal) || p.name.EndsWith(".mlp.router.up", StringComparison.Ordinal)
                        || (model.Model.Layers[0].Mlp is SwiGluMlp && p.name.Contains(".mlp.")))
            .Select(p => (p.name, p.parameter));

    /// <summary>
    /// One epoch (or <see cref="FineTuneOptions.MaxSteps"/> steps) over <paramref name="windows"/> [n, t] (int64
    /// token ids), in an order drawn from the seed, continuing after <see cref="CompletedSteps"/>. Each step runs in
    /// train mode (eval mode is restored on return); <paramref name="checkpoint"/> (optional) is written every <paramref name="checkpointEvery"/>
    /// steps and when cancelled.
    /// </summary>
    public FineTuneReport Train(Tensor windows, IProgress<FineTuneProgress>? progress = null, CancellationToken cancel = default,
        string? checkpoint = null, int checkpointEvery = 0)
    {
        if (_finished) throw new InvalidOperationException("Finish() was already called; create a new MoEFineTuner to train again.");
        if (windows.dim() != 2 || windows.shape[1] < 2) throw new ArgumentException("Training windows must be [samples, seq_len] with seq_len >= 2.");
        long n = windows.shape[0], t = windows.shape[1];
        int batch = _options.BatchSize;
        int steps = (int)((n + batch - 1) / batch);
        if (_options.MaxSteps > 0) steps = Math.Min(steps, _options.MaxSteps);
        var order = Order(n, _options.Seed);
        using var optimizer = CreateOptimizer();
        var groups = optimizer.Groups;
        double[] peaks = [_options.LearningRate, _options.RouterLearningRate];
        var losses = new List<double>();
        double scaleGradNorm = 0;
        var clock = Stopwatch.StartNew();
        long tokens = 0;
        int startStep = CompletedSteps;
        foreach (var b in _blocks) b.RecordLoad = _options.BiasSpeed > 0;
        _model.train();
        try
        {
            for (int step = startStep; step < steps; step++)
            {
                if (cancel.IsCancellationRequested)
                {
                    if (checkpoint is not null) SaveCheckpoint(checkpoint);
                    cancel.ThrowIfCancellationRequested();
                }
                using var scope = NewDisposeScope();
                _rng.manual_seed(_options.Seed * 1_000_003L + step);                         // dropout masks depend on the step only
                double factor = Schedule(step, steps);
                for (int g = 0; g < groups.Count; g++) groups[g].LearningRate = peaks[g] * factor;
                long rows = Math.Min(batch, n - (long)step * batch);
                var index = tensor(order.Skip(step * batch).Take((int)rows).ToArray());
                var ids = windows.index_select(0, index).to(ScalarType.Int64, _model.Device);  // [b, t]
                var loss = CausalLmLoss(_model, ids);
                optimizer.ZeroGrad();
                loss.backward();
                if (step == startStep && _options.TrainRouterScale && _blocks.Count > 0) scaleGradNorm = GradNorm(RouterScales);
                if (_options.MaxGradNorm > 0)
                    nn.utils.clip_grad_norm_(MainParameters().Concat(ScaleParameters()), _options.MaxGradNorm);
                optimizer.Step();
                if (_options.BiasSpeed > 0) UpdateBalancingBias(_blocks, _options.BiasSpeed);
                losses.Add(loss.item<float>());
                tokens += rows * t;
                CompletedSteps = step + 1;
                double tps = tokens / Math.Max(clock.Elapsed.TotalSeconds, 1e-9);
                progress?.Report(new FineTuneProgress(CompletedSteps, steps, losses[^1], tps,
                    TimeSpan.FromSeconds(clock.Elapsed.TotalSeconds / (CompletedSteps - startStep) * (steps - CompletedSteps))));
                if (checkpoint is not null && checkpointEvery > 0 && CompletedSteps % checkpointEvery == 0 && CompletedSteps < steps)
                    SaveCheckpoint(checkpoint);
            }
        }
        finally
        {
            foreach (var b in _blocks) b.RecordLoad = false;
            optimizer.ZeroGrad();
            _model.eval();                                                                   // the decode fast paths need !training
        }
        double seconds = clock.Elapsed.TotalSeconds;
        return new FineTuneReport(CompletedSteps, CompletedSteps - startStep, seconds, tokens / Math.Max(seconds, 1e-9),
            losses.Count > 0 ? losses[0] : double.NaN, losses.Count > 0 ? losses[^1] : double.NaN, losses, scaleGradNorm);
    }

    /// <summary>
    /// Ends fine-tuning: merges the LoRA adapters into the weights (unless <paramref name="keepAdapters"/>, in which
    /// case they stay attached and <see cref="AdapterState"/> exports them), freezes everything and calls model.eval().
    /// </summary>
    public void Finish(bool keepAdapters = false)
    {
        if (_finished) return;
        _finished = true;
        if (_lora is not null && !keepAdapters) _lora.MergeAndDetach();
        foreach (var p in MainParameters().Concat(RouterScales)) p.requires_grad = false;
        _model.eval();
    }

    /// <summary>The LoRA adapter tensors by key (empty in full mode); see <c>LoraAdapters</c> for the key scheme.</summary>
    public IEnumerable<KeyValuePair<string, Tensor>> AdapterState() => _lora?.StateDict() ?? [];

    /// <summary>
    /// Everything training changes: adapters (LoRA) or trained weights (full), and every layer's router scale u and
    /// balancing bias b. Optimiser moments are not included, so a resumed run restarts Adam's moments.
    /// </summary>
    internal IEnumerable<KeyValuePair<string, Tensor>> TrainedState()
    {
        foreach (var kv in AdapterState()) yield return kv;
        foreach (var (name, w) in _fullWeights) yield return new(name, w);
        for (int i = 0; i < _model.Model.Layers.Count; i++)
            if (_model.Model.Layers[i].Mlp is MoeBlock b)
            {
                yield return new($"model.layers.{i}.mlp.router.scale", b.Router.Scale);
                yield return new($"model.layers.{i}.mlp.router.bias", b.Router.Bias);
            }
    }

    /// <summary>
    /// Loads LoRA adapters saved by <c>cmoe finetune --keep-adapters</c> (<c>adapters.safetensors</c>) into this
    /// tuner's adapters (same rank); <see cref="Finish"/> then merges them.
    /// </summary>
    public void LoadAdapters(string path)
    {
        if (_lora is null) throw new InvalidOperationException("Adapters exist only in LoRA mode.");
        FineTuneCheckpoint.CopyInto(path, _lora.StateDict());
    }

    /// <summary>
    /// Copies everything this tuner trained (adapters or weights, u, b) into <paramref name="target"/>, a tuner with the same
    /// options on another copy of the model, converting dtype and device: e.g. adapters trained against bf16 base weights
    /// merged into the fp32 weights (see <c>cmoe finetune --dtype bf16</c>).
    /// </summary>
    public void CopyTrainedStateTo(MoEFineTuner target)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var into = target.TrainedState().ToDictionary(kv => kv.Key, kv => kv.Value);
        foreach (var (key, value) in TrainedState())
        {
            if (!into.TryGetValue(key, out var destination) || !destination.shape.SequenceEqual(value.shape))
                throw new ArgumentException($"The target tuner has no trained tensor '{key}' of shape [{string.Join(", ", value.shape)}]; both tuners need the same model shape and options.");
            destination.copy_(value.to(destination.dtype, destination.device));
        }
    }

    /// <summary>Writes a resumable checkpoint folder (see <see cref="FineTuneCheckpoint"/>).</summary>
    public void SaveCheckpoint(string folder) => FineTuneCheckpoint.Save(folder, _options, CompletedSteps, TrainedState());

    /// <summary>Restores a checkpoint written with the same options; training then continues at its step.</summary>
    public void LoadCheckpoint(string folder) => CompletedSteps = FineTuneCheckpoint.Load(folder, _options, TrainedState());

    /// <summary>Mean causal-LM loss: cross-entropy of tokens 1..t-1 given their prefixes, in fp32 (scalar).</summary>
    public static Tensor CausalLmLoss(LlamaForCausalLM model, Tensor ids)
    {
        using var scope = NewDisposeScope();
        long b = ids.shape[0], t = ids.shape[1];
        var hidden = model.Hidden(ids.narrow(1, 0, t - 1));                                 // [b, t-1, d]
        var logits = model.Logits(hidden).to(ScalarType.Float32);                           // [b, t-1, vocab]
        var targets = ids.narrow(1, 1, t - 1).to(logits.device);                            // [b, t-1]
        return F.cross_entropy(logits.reshape(b * (t - 1), -1), targets.reshape(-1)).MoveToOuterDisposeScope();
    }

    /// <summary>Auxiliary-loss-free balancing (method section 4): b_j -= gamma * sign(c_j - mean(c)) per layer.</summary>
    internal static void UpdateBalancingBias(IEnumerable<MoeBlock> blocks, double gamma)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        foreach (var block in blocks)
        {
            if (block.LastExpertCounts is not { } counts) continue;
            var c = counts.to(ScalarType.Float32, block.Router.Bias.device);                   // [E]
            block.Router.Bias.sub_(c.sub(c.mean()).sign().mul(Scalars.Of(gamma)));             // gamma is fixed for a run
        }
    }

    private AdamOptimizer CreateOptimizer()
    {
        var o = _options;
        return new AdamOptimizer([new(MainParameters().ToList(), o.LearningRate, o.WeightDecay), new(ScaleParameters().ToList(), o.RouterLearningRate, 0)],
            o.Beta1, o.Beta2, decoupled: o.Optimizer == FineTuneOptimizer.AdamW);
    }

    /// <summary>Learning-rate factor: linear warm-up, then constant or linear decay to 0 at the last step.</summary>
    private double Schedule(int step, int steps)
    {
        int warm = _options.WarmupSteps;
        if (step < warm) return (step + 1.0) / (warm + 1.0);
        if (!_options.LinearDecay) return 1.0;
        return Math.Max(0.0, (double)(steps - step) / Math.Max(1, steps - warm));
    }

    private static long[] Order(long n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, (int)n).Select(i => (long)i).OrderBy(_ => rng.Next()).ToArray();
    }

    private static double GradNorm(IEnumerable<Parameter> parameters)
    {
        using var scope = NewDisposeScope();
        double sum = 0;
        foreach (var p in parameters)
            if (p.grad is { } g) sum += g.mul(g).sum().item<float>();
        return Math.Sqrt(sum);
    }

    /// <summary>Unhooks and frees the adapters (call <see cref="Finish"/> first to keep their effect).</summary>
    public void Dispose()
    {
        foreach (var p in _fullWeights.Select(w => w.Weight).Concat(RouterScales)) p.requires_grad = false;
        _lora?.Dispose();
        _rng.Dispose();
    }
}
