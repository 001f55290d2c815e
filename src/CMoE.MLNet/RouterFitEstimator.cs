using CMoE.Modeling;
using CMoE.MLNet.Persistence;
using CMoE.MLNet.Scoring;
using CMoE.Modeling.MoE;
using Microsoft.ML;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace CMoE.MLNet;

/// <summary>
/// The training-free router of a carved model (method section 4), with optional load balancing of its selection
/// bias on the calibration data: each round routes the calibration windows, counts the tokens c_j each routed
/// expert receives per layer, and moves the bias b_j by -step where c_j &gt; mean(c) and +step where c_j &lt;
/// mean(c) (the paper's auxiliary-loss-free update, applied without training). The bias affects expert selection
/// only, never the gate values. A fixed-step sign rule can overshoot, so the most balanced bias seen is kept. With <see cref="Options.BalanceIterations"/> = 0 the router is kept as carved.
/// Chain it after a carving stage (or pass the carved transformer). Created by <c>mlContext.Transforms.FitRouter(...)</c>.
/// </summary>
public sealed class RouterFitEstimator : LanguageModelEstimatorBase<RouterFitTransformer>
{
    private readonly Options _options;
    private readonly LanguageModelTransformerBase? _source;

    /// <summary>Options of <see cref="RouterFitEstimator"/>.</summary>
    public sealed class Options : CalibrationOptions
    {
        /// <summary>Bias balancing rounds over the calibration windows (0 = keep the carved router). Default 0.</summary>
        public int BalanceIterations { get; set; }

        /// <summary>The bias step gamma per round (the paper's 1e-3). Default 1e-3.</summary>
        public float BiasStep { get; set; } = 1e-3f;

        /// <summary>Calibration windows per forward pass. Default 8.</summary>
        public int ForwardBatch { get; set; } = 8;
    }

    internal RouterFitEstimator(IHostEnvironment env, Options options, LanguageModelTransformerBase? source = null)
        : base(env, nameof(RouterFitEstimator), options)
    {
        if (options.BalanceIterations < 0) throw new ArgumentException($"BalanceIterations must be >= 0; got {options.BalanceIterations}.", nameof(options));
        if (!(options.BiasStep > 0)) throw new ArgumentException($"BiasStep must be positive; got {options.BiasStep}.", nameof(options));
        if (options.ForwardBatch < 1) throw new ArgumentException($"ForwardBatch must be at least 1; got {options.ForwardBatch}.", nameof(options));
        options.ValidateCalibration();
        _options = options;
        _source = source;
    }

    /// <summary>Copies the upstream carved model and balances its router bias on the text column's calibration windows.</summary>
    /// <param name="input">The data; its text column is the calibration text.</param>
    public override RouterFitTransformer Fit(IDataView input)
    {
        CheckInput(input);
        var source = _source ?? Upstream<LanguageModelTransformerBase>(input)
            ?? throw new InvalidOperationException($"{Name} has no carved model: chain it after mlContext.Transforms.CarveExperts(...) or pass a carved transformer.");
        if (!source.IsCarved)
            throw new InvalidOperationException($"{Name}: the upstream {source.GetType().Name} holds a dense model; chain it after a carving stage (CarveExperts).");
        var handle = source.Handle.Clone();
        try
        {
            LoadBalance? balance = null;
            if (_options.BalanceIterations > 0)
            {
                using var ids = tensor(CalibrationData.Windows(input, handle.Tokenizer, _options, Name));   // [samples, length]
                balance = Balance(handle, ids, _options.BalanceIterations, _options.BiasStep, _options.ForwardBatch, _options);
            }
            handle.UseWeights(Weights);
            return new RouterFitTransformer(Env, handle, Settings, balance);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Runs the bias balancing rounds on <paramref name="ids"/> [samples, length] and returns the load figures.</summary>
    internal static LoadBalance Balance(LanguageModelHandle handle, Tensor ids, int iterations, float step, int batch, CalibrationOptions options)
    {
        var blocks = handle.Blocks;
        if (blocks.Count == 0) throw new InvalidOperationException("The model has no MoE block; carve it first.");
        using var noGrad = no_grad();
        foreach (var b in blocks) b.RecordLoad = true;
        try
        {
            var counts = Route(handle, blocks, ids, batch, options);
            double before = Imbalance(counts), best = before;
            var bestBias = blocks.Select(b => b.Router.Bias.clone()).ToArray();
            for (int it = 0; it < iterations; it++)
            {
                options.Cancellation.ThrowIfCancellationRequested();
                for (int l = 0; l < blocks.Count; l++)
                {
                    using var c = tensor(counts[l]);                                         // [E] tokens per expert
                    using var direction = c.sub(c.mean()).sign().to(ScalarType.Float32);     // +1 overloaded, -1 underloaded
                    using var scaled = direction.mul(Scalars.Of((double)step));                // step is fixed for the fit
                    blocks[l].Router.Bias.sub_(scaled);                                      // b_j -= gamma sign(c_j - mean c)
                }
                counts = Route(handle, blocks, ids, batch, options);
                double now = Imbalance(counts);
                if (now < best)
                {
                    best = now;
                    for (int l = 0; l < blocks.Count; l++) bestBias[l].copy_(blocks[l].Router.Bias);
                }
                options.Progress?.Report(new CMoEProgress("router", it + 1, iterations));
            }
            // A fixed-step sign rule can overshoot: keep the most balanced bias seen (the carved one if none was better).
            for (int l = 0; l < blocks.Count; l++)
            {
                blocks[l].Router.Bias.copy_(bestBias[l]);
                bestBias[l].Dispose();
            }
            handle.MarkChanged(handle.Layout);
            return new LoadBalance(before, best, iterations);
        }
        finally
        {
            foreach (var b in blocks) b.RecordLoad = false;
        }
    }

    /// <summary>Tokens per routed expert per layer over all windows: [layers][E].</summary>
    private static double[][] Route(LanguageModelHandle handle, IReadOnlyList<MoeBlock> blocks, Tensor ids, int batch, CalibrationOptions options)
    {
        var counts = blocks.Select(b => new double[b.Shape.RoutedExperts]).ToArray();
        for (long start = 0; start < ids.shape[0]; start += batch)
        {
            options.Cancellation.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            handle.Model.Hidden(ids.narrow(0, start, Math.Min(batch, ids.shape[0] - start)));  // [b, t, d]; counts recorded per block
            for (int l = 0; l < blocks.Count; l++)
            {
                var layer = blocks[l].LastExpertCounts!.to(ScalarType.Float64).data<double>().ToArray();
                for (int j = 0; j < layer.Length; j++) counts[l][j] += layer[j];
            }
        }
        return counts;
    }

    /// <summary>Mean over layers of max_j c_j / mean_j c_j (1 = perfectly balanced).</summary>
    private static double Imbalance(double[][] counts) =>
        counts.Average(c => c.Average() > 0 ? c.Max() / c.Average() : 1);
}

/// <summary>Router load on the calibration data before and after bias balancing.</summary>
/// <param name="ImbalanceBefore">Mean over layers of (largest expert load / mean expert load) before balancing.</param>
/// <param name="ImbalanceAfter">The same with the bias kept: the most balanced round's (1 = perfectly balanced).</param>
/// <param name="Iterations">Balancing rounds run.</param>
public sealed record LoadBalance(double ImbalanceBefore, double ImbalanceAfter, int Iterations);

/// <summary>A carved model with its fitted router. Scores rows; saved with the model zip (the bias is in the weights).</summary>
public sealed class RouterFitTransformer : LanguageModelTransformerBase, ILoadableTransformer<RouterFitTransformer>
{
    private static readonly ModelFormat FormatInfo = new("CMoERouterFit", "CMOERFTR", Version: 1);

    internal RouterFitTransformer(IHostEnvironment env, LanguageModelHandle handle, ScoringSettings settings, LoadBalance? balance)
        : base(env, nameof(RouterFitTransformer), handle, settings)
    {
        Balance = balance;
    }

    /// <summary>Load figures of the balancing, or null when no balancing ran.</summary>
    public LoadBalance? Balance { get; }

    static ModelFormat ILoadableTransformer<RouterFitTransformer>.Format => FormatInfo;

    private protected override ModelFormat SaveFormat => FormatInfo;

    // Extra header: bool has balance, then f64 before, f64 after, i32 iterations when it has.
    private protected override void WriteExtra(ModelPayload payload)
    {
        payload.Header.Write(Balance is not null);
        if (Balance is null) return;
        payload.Header.Write(Balance.ImbalanceBefore);
        payload.Header.Write(Balance.ImbalanceAfter);
        payload.Header.Write(Balance.Iterations);
    }

    static RouterFitTransformer ILoadableTransformer<RouterFitTransformer>.Load(IHostEnvironment env, ModelPayloadReader payload)
    {
        var (handle, settings) = ReadModel(payload);
        var h = payload.Header;
        var balance = h.ReadBoolean() ? new LoadBalance(h.ReadDouble(), h.ReadDouble(), h.ReadInt32()) : null;
        return new RouterFitTransformer(env, handle, settings, balance);
    }
}
