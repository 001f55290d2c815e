using System.Diagnostics;
using CMoE.Modeling;
using CMoE.Modeling.MoE;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Training;

/// <summary>
/// Fine-tunes a causal LM (dense or carved) into a <see cref="SequenceClassifier"/>: cross-entropy of the head's logits,
/// the head trained with LoRA on the backbone (the adapters of <see cref="MoEFineTuner"/>: q/k/v/o, the dense FFN or the
/// shared and routed experts) or, in <see cref="FineTuneMode.Full"/> mode, with the same matrices themselves; for carved
/// models the router scale u trains at its own rate and the auxiliary-loss-free balancing bias moves after every step,
/// exactly as in <see cref="MoEFineTuner"/>. AdamW (<see cref="AdamOptimizer"/>), warm-up then linear decay, gradient
/// clipping, optional inverse-frequency class weights, early stopping on a validation fraction (the best state is kept),
/// its own generator for LoRA init and dropout. Everything stays as tensors on the model's device; the host reads one loss
/// per step and the routing once per MoE layer per step.
/// Usage: construct, <see cref="Train"/>, then <see cref="Finish"/> (merges the adapters so scoring takes the fast inference
/// paths; the classifier is then <see cref="Classifier"/>).
/// </summary>
public sealed class ClassifierFineTuner : IDisposable
{
    private readonly LlamaForCausalLM _model;
    private readonly ClassifierOptions _options;
    private readonly LoraAdapters? _lora;
    private readonly List<Parameter> _fullWeights = [];
    private readonly List<MoeBlock> _blocks;
    private readonly Generator _rng;
    private bool _finished;

    /// <summary>Prepares <paramref name="model"/> for training a <paramref name="classes"/>-way head.</summary>
    /// <param name="model">The backbone, trained in place (fp32 or bf16 compute; not int8).</param>
    /// <param name="classes">Number of classes (at least 2).</param>
    /// <param name="padId">Token id used to pad rows.</param>
    /// <param name="options">The knobs.</param>
    public ClassifierFineTuner(LlamaForCausalLM model, int classes, long padId, ClassifierOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _model = model;
        _options = options;
        _blocks = model.Model.Layers.Select(l => l.Mlp).OfType<MoeBlock>().ToList();
        Classifier = SequenceClassifier.Create(model, classes, options.Pooling, padId, options.Seed);
        _rng = new Generator((ulong)options.Seed, model.Device);
        if (options.Mode == FineTuneMode.Lora)
            _lora = LoraAdapters.Attach(model, options.LoraRank, options.LoraAlpha, options.LoraDropout, _rng);
        else
            _fullWeights.AddRange(MoEFineTuner.FullModeWeights(model).Select(w => w.Item2));
        foreach (var w in _fullWeights) w.requires_grad = true;
        foreach (var u in RouterScales) u.requires_grad = options.TrainRouterScale;
        Classifier.Weight.requires_grad = true;
        Classifier.Bias.requires_grad = true;
    }

    /// <summary>The classifier (head + backbone); usable for scoring after <see cref="Finish"/>.</summary>
    public SequenceClassifier Classifier { get; }

    /// <summary>Trained scalars: adapters or weights, head, and u.</summary>
    public long TrainableParameters => BackboneParameters().Concat(HeadParameters()).Concat(ScaleParameters()).Sum(p => p.numel());

    private IEnumerable<Parameter> RouterScales => _blocks.Select(b => b.Router.Scale);
    private IEnumerable<Parameter> BackboneParameters() => _lora is not null ? _lora.Parameters() : _fullWeights;
    private IEnumerable<Parameter> HeadParameters() => [Classifier.Weight, Classifier.Bias];
    private IEnumerable<Parameter> ScaleParameters() => _options.TrainRouterScale ? RouterScales : [];
    private IEnumerable<Tensor> TrainedTensors() =>
        BackboneParameters().Concat(HeadParameters()).Concat(RouterScales).Cast<Tensor>().Concat(_blocks.Select(b => (Tensor)b.Router.Bias));

    /// <summary>
    /// Trains on <paramref name="rows"/> (token ids, BOS first, already cut to the wanted length) with class
    /// <paramref name="labels"/> (0..C-1). A seeded <see cref="ClassifierOptions.ValidationFraction"/> of the rows is held
    /// out; after each validation pass the state with the lowest validation loss is remembered, training stops after
    /// <see cref="ClassifierOptions.Patience"/> passes without improvement, and the best state is restored at the end.
    /// </summary>
    /// <exception cref="OperationCanceledException"><paramref name="cancel"/> fired (the model is left in eval mode with adapters attached; dispose the tuner).</exception>
    public ClassifierReport Train(IReadOnlyList<int[]> rows, IReadOnlyList<int> labels, IProgress<ClassifierProgress>? progress = null,
        CancellationToken cancel = default)
    {
        if (_finished) throw new InvalidOperationException("Finish() was already called; create a new ClassifierFineTuner to train again.");
        if (rows.Count != labels.Count) throw new ArgumentException($"{rows.Count} rows but {labels.Count} labels.");
        int classes = Classifier.Classes;
        foreach (int l in labels)
            if (l < 0 || l >= classes) throw new ArgumentException($"Labels must be class indices in 0..{classes - 1} (found {l}).");
        var (train, validation) = Split(rows.Count, _options.ValidationFraction, _options.Seed);
        if (train.Length == 0) throw new ArgumentException($"No training rows left after holding out {_options.ValidationFraction:P0} for validation; give more rows.");
        int batch = _options.BatchSize;
        int perEpoch = (train.Length + batch - 1) / batch;
        int steps = perEpoch * _options.Epochs;
        if (_options.MaxSteps > 0) steps = Math.Min(steps, _options.MaxSteps);
        int evalEvery = _options.ValidationEvery > 0 ? _options.ValidationEvery : perEpoch;
        int warm = (int)(steps * _options.WarmupFraction);
        using var classWeights = ClassWeights(train.Select(i => labels[i]), classes);
        using var optimizer = new AdamOptimizer(
            [new(BackboneParameters().ToList(), _options.LearningRate, _options.WeightDecay), new(HeadParameters().ToList(), _options.HeadLearningRate, _options.WeightDecay),
             new(ScaleParameters().ToList(), _options.RouterLearningRate, 0)],
            0.9, 0.999, decoupled: true);
        double[] peaks = [_options.LearningRate, _options.HeadLearningRate, _options.RouterLearningRate];
        List<Tensor>? best = null;
        double bestLoss = double.NaN, bestAcc = double.NaN, valLoss = double.NaN, valAcc = double.NaN, lastLoss = double.NaN;
        int bestStep = 0, sinceBest = 0, done = 0;
        bool stopped = false;
        long tokens = 0;
        int[] order = [];
        var clock = Stopwatch.StartNew();
        foreach (var b in _blocks) b.RecordLoad = _options.BiasSpeed > 0;
        try
        {
            for (int step = 0; step < steps && !stopped; step++)
            {
                cancel.ThrowIfCancellationRequested();
                int epoch = step / perEpoch, inEpoch = step % perEpoch;
                if (inEpoch == 0 || order.Length == 0) order = EpochOrder(train, _options.Seed, epoch);
                var picked = order.Skip(inEpoch * batch).Take(batch).ToArray();
                _model.train();
                using (var scope = NewDisposeScope())
                {
                    _rng.manual_seed(_options.Seed * 1_000_003L + step);                   // dropout masks depend on the step only
                    double factor = step < warm ? (step + 1.0) / (warm + 1.0) : Math.Max(0.0, (double)(steps - step) / Math.Max(1, steps - warm));
                    for (int g = 0; g < peaks.Length; g++) optimizer.Groups[g].LearningRate = peaks[g] * factor;
                    var (ids, lengths) = Classifier.Batch(picked.Select(i => rows[i]).ToList());    // [b, t], [b]
                    var target = tensor(picked.Select(i => (long)labels[i]).ToArray()).to(_model.Device);   // [b]
                    var loss = F.cross_entropy(Classifier.Logits(ids, lengths), target, weight: classWeights);
                    optimizer.ZeroGrad();
                    loss.backward();
                    if (_options.MaxGradNorm > 0)
                        nn.utils.clip_grad_norm_(BackboneParameters().Concat(HeadParameters()).Concat(ScaleParameters()), _options.MaxGradNorm);
                    optimizer.Step();
                    if (_options.BiasSpeed > 0) MoEFineTuner.UpdateBalancingBias(_blocks, _options.BiasSpeed);
                    lastLoss = loss.item<float>();
                    tokens += picked.Sum(i => (long)rows[i].Length);
                }
                done = step + 1;
                if (validation.Length > 0 && (done % evalEvery == 0 || done == steps))
                {
                    (valLoss, valAcc) = Validate(rows, labels, validation, classWeights);
                    if (best is null || valLoss < bestLoss)
                    {
                        foreach (var t in best ?? []) t.Dispose();
                        best = Snapshot();
                        (bestLoss, bestAcc, bestStep, sinceBest) = (valLoss, valAcc, done, 0);
                    }
                    else if (_options.Patience > 0 && ++sinceBest >= _options.Patience && done < steps) stopped = true;
                }
                double elapsed = clock.Elapsed.TotalSeconds;
                progress?.Report(new ClassifierProgress(done, steps, lastLoss, tokens / Math.Max(elapsed, 1e-9),
                    TimeSpan.FromSeconds(elapsed / done * (steps - done)), valLoss, valAcc));
            }
            if (best is not null && bestStep != done) Restore(best);
            if (best is null) bestStep = done;
        }
        finally
        {
            foreach (var t in best ?? []) t.Dispose();
            foreach (var b in _blocks) b.RecordLoad = false;
            optimizer.ZeroGrad();
            _model.eval();
        }
        double seconds = clock.Elapsed.TotalSeconds;
        return new ClassifierReport(done, seconds, tokens / Math.Max(seconds, 1e-9), lastLoss, bestLoss, bestAcc, bestStep, stopped);
    }

    /// <summary>Merges the LoRA adapters into the weights, freezes everything and puts the model in eval mode.</summary>
    public SequenceClassifier Finish()
    {
        if (_finished) return Classifier;
        _finished = true;
        _lora?.MergeAndDetach();
        foreach (var p in BackboneParameters().Concat(HeadParameters()).Concat(RouterScales)) p.requires_grad = false;
        _model.eval();
        return Classifier;
    }

    /// <summary>Mean (class-weighted) loss and accuracy on the validation rows, eval mode, no gradients.</summary>
    private (double Loss, double Accuracy) Validate(IReadOnlyList<int[]> rows, IReadOnlyList<int> labels, int[] validation, Tensor? classWeights)
    {
        _model.eval();
        bool record = _blocks.Count > 0 && _blocks[0].RecordLoad;
        foreach (var b in _blocks) b.RecordLoad = false;                                    // validation does not move the bias
        try
        {
            var probabilities = Classifier.Probabilities(validation.Select(i => rows[i]).ToList());
            double loss = 0, weights = 0;
            int correct = 0;
            var w = classWeights is null ? null : classWeights.cpu().data<float>().ToArray();
            for (int k = 0; k < validation.Length; k++)
            {
                int y = labels[validation[k]];
                var p = probabilities[k];
                double wy = w?[y] ?? 1.0;
                loss -= wy * Math.Log(Math.Max(p[y], 1e-30));
                weights += wy;
                if (Array.IndexOf(p, p.Max()) == y) correct++;
            }
            return (loss / weights, (double)correct / validation.Length);
        }
        finally
        {
            foreach (var b in _blocks) b.RecordLoad = record;
        }
    }

    private List<Tensor> Snapshot()
    {
        using var noGrad = no_grad();
        return TrainedTensors().Select(t => t.detach().clone().DetachFromDisposeScope()).ToList();
    }

    private void Restore(List<Tensor> saved)
    {
        using var noGrad = no_grad();
        foreach (var (target, value) in TrainedTensors().Zip(saved)) target.copy_(value);
    }

    /// <summary>Inverse-frequency weights n / (C n_c) on the model's device, or null when weighting is off.</summary>
    private Tensor? ClassWeights(IEnumerable<int> labels, int classes)
    {
        if (!_options.ClassWeighting) return null;
        var counts = new double[classes];
        int n = 0;
        foreach (int l in labels) { counts[l]++; n++; }
        var w = counts.Select(c => c > 0 ? (float)(n / (classes * c)) : 0f).ToArray();
        return tensor(w).to(_model.Device).DetachFromDisposeScope();
    }

    /// <summary>A seeded split: the first round(n * fraction) of a shuffled order validate, the rest train.</summary>
    internal static (int[] Train, int[] Validation) Split(int n, double fraction, int seed)
    {
        var rng = new Random(seed);
        var order = Enumerable.Range(0, n).OrderBy(_ => rng.Next()).ToArray();
        int v = fraction > 0 ? Math.Min(n - 1, Math.Max(1, (int)Math.Round(n * fraction))) : 0;
        return (order[v..], order[..v]);
    }

    private static int[] EpochOrder(int[] train, int seed, int epoch)
    {
        var rng = new Random(seed * 7919 + epoch + 1);
        return train.OrderBy(_ => rng.Next()).ToArray();
    }

    /// <summary>Unhooks and frees the adapters (call <see cref="Finish"/> first to keep their effect); <see cref="Classifier"/> stays usable and is the caller's to dispose.</summary>
    public void Dispose()
    {
        foreach (var p in _fullWeights.Concat(RouterScales)) p.requires_grad = false;
        _lora?.Dispose();
        _rng.Dispose();
    }
}
