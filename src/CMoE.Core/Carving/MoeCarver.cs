using System.Diagnostics;
using CMoE.Modeling;
using CMoE.Modeling.MoE;
using static TorchSharp.torch;

namespace CMoE.Carving;

/// <summary>Timing and quality figures of one carved layer.</summary>
/// <param name="Layer">Layer index.</param>
/// <param name="ProfileSeconds">Capturing FFN inputs and computing markers.</param>
/// <param name="PartitionSeconds">Shared selection, balanced clustering and router construction.</param>
/// <param name="AssignmentCost">Optimal L1 cost of the last balanced assignment.</param>
public sealed record LayerCarveReport(int Layer, double ProfileSeconds, double PartitionSeconds, double AssignmentCost);

/// <summary>The outcome of carving a whole model.</summary>
/// <param name="Layout">The layout.</param>
/// <param name="Seconds">Total wall time.</param>
/// <param name="Layers">Per-layer figures.</param>
/// <param name="ActiveFfnFraction">Fraction of FFN neurons active per token.</param>
public sealed record CarveReport(MoeLayout Layout, double Seconds, IReadOnlyList<LayerCarveReport> Layers, double ActiveFfnFraction);

/// <summary>
/// Sequential CMoE conversion (method sections 1-4): layer by layer, the calibration hidden states are
/// pushed through the attention half of layer l, the FFN input is profiled, the FFN is carved into a
/// <see cref="MoeBlock"/>, and the hidden states continue through the carved block, so layer l + 1 is
/// profiled on the outputs of the already-carved layers 0..l without re-running the model.
/// </summary>
public static class MoeCarver
{
    /// <summary>Carves every dense FFN of <paramref name="model"/> in place.</summary>
    /// <param name="model">A dense model; its FFNs are replaced.</param>
    /// <param name="calibration">Calibration token windows [samples, seq_len] (int64).</param>
    /// <param name="options">Layout and knobs.</param>
    /// <param name="progress">Receives (layers done, layers total).</param>
    /// <param name="cancel">Cancels between layers; the model is then partly carved and should be discarded.</param>
    public static CarveReport Carve(LlamaForCausalLM model, Tensor calibration, CarveOptions options,
        IProgress<(int Done, int Total)>? progress = null, CancellationToken cancel = default)
    {
        var config = model.Config;
        options.Validate(config.IntermediateSize);
        if (calibration.dim() != 2 || calibration.shape[1] < 2)
            throw new ArgumentException("Calibration must be token windows [samples, seq_len] with seq_len >= 2.");
        var clock = Stopwatch.StartNew();
        var reports = new List<LayerCarveReport>();
        using var noGrad = no_grad();
        using var ids = calibration.to(ScalarType.Int64, model.Device);
        var (cos, sin) = model.Rotary(0, ids.shape[1]);
        using var cosScope = cos;
        using var sinScope = sin;
        var hidden = Batches(ids, options.Batch).Select(b => model.Model.Embeddings.forward(b)).ToList(); // [b, t, d] each
        try
        {
            for (int l = 0; l < config.NumLayers; l++)
            {
                cancel.ThrowIfCancellationRequested();
                reports.Add(CarveLayerSequential(model.Model.Layers[l], l, ref hidden, cos, sin, options));
                progress?.Report((l + 1, config.NumLayers));
            }
        }
        finally
        {
            DisposeAll(hidden);
        }
        return new CarveReport(options.Layout, clock.Elapsed.TotalSeconds, reports, options.Layout.ActiveFraction);
    }

    /// <summary>
    /// Carves every dense FFN of <paramref name="model"/> in place from a one-pass profile (no re-profiling:
    /// a sweep calls this once per layout on a fresh copy of the dense model).
    /// </summary>
    public static CarveReport CarveFromProfile(LlamaForCausalLM model, ActivationProfile profile, MoeLayout layout, int iterations = 1,
        IProgress<(int Done, int Total)>? progress = null, CancellationToken cancel = default)
    {
        var config = model.Config;
        new CarveOptions { Layout = layout, KAct = profile.KAct, Score = profile.Score, Iterations = iterations }.Validate(config.IntermediateSize);
        if (profile.Layers != config.NumLayers || profile.IntermediateSize != config.IntermediateSize)
            throw new ArgumentException($"The profile ({profile.Layers} layers x {profile.IntermediateSize} neurons) does not belong to this model ({config.NumLayers} x {config.IntermediateSize}).");
        var clock = Stopwatch.StartNew();
        var reports = new List<LayerCarveReport>();
        using var noGrad = no_grad();
        for (int l = 0; l < config.NumLayers; l++)
        {
            cancel.ThrowIfCancellationRequested();
            var layer = model.Model.Layers[l];
            var dense = DenseFfn(layer, l);
            var t0 = Stopwatch.GetTimestamp();
            var (_, partition) = CarveLayer(layer, dense, profile.Markers(l), layout, iterations);
            reports.Add(new LayerCarveReport(l, 0, Stopwatch.GetElapsedTime(t0).TotalSeconds, partition.AssignmentCost));
            progress?.Report((l + 1, config.NumLayers));
        }
        return new CarveReport(layout, clock.Elapsed.TotalSeconds, reports, layout.ActiveFraction);
    }

    /// <summary>
    /// One step of sequential carving: pushes the calibration hidden states <paramref name="hidden"/> (batches of
    /// [b, t, d], replaced by the layer's outputs) through the attention half of <paramref name="layer"/>,
    /// profiles its FFN input, carves the FFN in place and continues through the carved block.
    /// </summary>
    internal static LayerCarveReport CarveLayerSequential(DecoderLayer layer, int l, ref List<Tensor> hidden, Tensor cos, Tensor sin, CarveOptions options)
    {
        using var noGrad = no_grad();
        var dense = DenseFfn(layer, l);
        long d = dense.Gate.Weight.shape[1];
        var t0 = Stopwatch.GetTimestamp();
        var mids = hidden.Select(x => layer.AttentionResidual(x, cos, sin, null, l)).ToList();     // h = x + Attn(..)
        var ffnInputs = mids.Select(layer.FfnInput).ToList();                                    // RMSNorm(h)
        using var flatInputs = cat(ffnInputs.Select(f => f.reshape(-1, d)).ToList(), 0);          // [q, d]
        Tensor markers;
        using (var weights = options.NeuronWeighting == NeuronWeighting.DownNorm ? dense.Down.Weight.to(ScalarType.Float32).norm(0, false) : null)   // [dh]
            markers = ActivationMarkers.Markers(flatInputs, dense.Gate.Weight, dense.Up.Weight, options.KAct, options.Score, dense.Activation, weights); // [q, dh]
        double profileSeconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;

        using var denseOutputs = options.DownFit == DownProjectionFit.Ridge ? dense.forward(flatInputs) : null;    // [q, d], before the dense FFN is replaced
        var t1 = Stopwatch.GetTimestamp();
        MoeBlock moe;
        ExpertPartition partition;
        using (markers) (moe, partition) = CarveLayer(layer, dense, markers, options.Layout, options.Iterations, options.RouterVectors);
        if (options.Routing == RouterSelection.Threshold)
        {
            using var scope = NewDisposeScope();
            var p = cat(ffnInputs.Select(f => moe.Router.Probabilities(f.reshape(-1, d))).ToList(), 0);   // [q, E], bias 0
            moe.RouterThreshold = ThresholdRouting.Calibrate(p, options.Layout.Active);
        }
        if (denseOutputs is not null) DownProjectionRefit.Refit(moe, flatInputs, denseOutputs, options.DownFitRidge);
        double partitionSeconds = Stopwatch.GetElapsedTime(t1).TotalSeconds;

        var next = mids.Zip(ffnInputs, (h, f) => { using var y = moe.forward(f); return layer.AddFfnOutput(h, y); }).ToList();   // y = h + MoE(RMSNorm(h))
        DisposeAll(hidden);
        DisposeAll(mids);
        DisposeAll(ffnInputs);
        hidden = next;
        return new LayerCarveReport(l, profileSeconds, partitionSeconds, partition.AssignmentCost);
    }

    /// <summary>The layer's dense FFN; a layer that is already carved is an error.</summary>
    private static SwiGluMlp DenseFfn(DecoderLayer layer, int l) =>
        layer.Mlp as SwiGluMlp ?? throw new InvalidOperationException($"Layer {l} is already carved; carve a dense model.");

    /// <summary>Partitions one layer's neurons from its markers (method sections 2-3) and swaps in the carved block (section 4).</summary>
    private static (MoeBlock Block, ExpertPartition Partition) CarveLayer(DecoderLayer layer, SwiGluMlp dense, Tensor markers, MoeLayout layout, int iterations,
        RouterVectors vectors = RouterVectors.Representative)
    {
        var partition = ExpertPartitioner.Partition(markers, layout, iterations);
        var block = MoeBlock.FromDense(dense, partition.Shared, partition.Routed, partition.Representatives, layout.Active);
        if (vectors == RouterVectors.Mean) block.Router.InitialiseMean(dense.Gate.Weight, dense.Up.Weight, partition.Routed);
        layer.ReplaceMlp(block);
        return (block, partition);
    }

    internal static IEnumerable<Tensor> Batches(Tensor ids, int batch)
    {
        for (long start = 0; start < ids.shape[0]; start += batch)
            yield return ids.narrow(0, start, Math.Min(batch, ids.shape[0] - start));
    }

    internal static void DisposeAll(IEnumerable<Tensor> tensors)
    {
        foreach (var t in tensors) t.Dispose();
    }
}
