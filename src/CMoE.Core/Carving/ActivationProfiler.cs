using CMoE.Modeling;
using static TorchSharp.torch;

namespace CMoE.Carving;

/// <summary>
/// Profiles every FFN of a dense model in one pass over the calibration windows (no carving in
/// between), producing an <see cref="ActivationProfile"/> that any layout can be carved from.
/// <see cref="MoeCarver.Carve"/> instead profiles layer l on the outputs of the already-carved layers
/// (sequential, the paper's procedure); this one-pass profile is what sweeps reuse across layouts.
/// </summary>
public static class ActivationProfiler
{
    /// <summary>Captures each layer's FFN input on <paramref name="calibration"/> [samples, seq_len] and computes markers.</summary>
    public static ActivationProfile Profile(LlamaForCausalLM model, Tensor calibration, ActivationScore score = ActivationScore.Cosine,
        int kAct = ActivationMarkers.DefaultMarkersPerToken, int batch = 8, IProgress<(int Done, int Total)>? progress = null,
        CancellationToken cancel = default)
    {
        if (calibration.dim() != 2 || calibration.shape[1] < 2)
            throw new ArgumentException("Calibration must be token windows [samples, seq_len] with seq_len >= 2.");
        var config = model.Config;
        if (kAct < 1 || kAct > config.IntermediateSize)
            throw new ArgumentException($"k-act must be between 1 and the FFN width {config.IntermediateSize} (got {kAct}).");
        using var noGrad = no_grad();
        using var ids = calibration.to(ScalarType.Int64, model.Device);
        var (cos, sin) = model.Rotary(0, ids.shape[1]);
        using var c = cos;
        using var s = sin;
        var perLayer = Enumerable.Range(0, config.NumLayers).Select(_ => new List<Tensor>()).ToArray();
        try
        {
            for (long start = 0; start < ids.shape[0]; start += batch)
            {
                cancel.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                var x = model.Model.Embeddings.forward(ids.narrow(0, start, Math.Min(batch, ids.shape[0] - start))); // [b, t, d]
                for (int l = 0; l < config.NumLayers; l++)
                {
                    var layer = model.Model.Layers[l];
                    if (layer.Mlp is not SwiGluMlp dense)
                        throw new InvalidOperationException($"Layer {l} is already carved; profile a dense model.");
                    var h = layer.AttentionResidual(x, cos, sin, null, l);                  // [b, t, d]
                    var f = layer.FfnInput(h);                                              // [b, t, d]
                    var markers = ActivationMarkers.Markers(f.reshape(-1, config.HiddenSize), dense.Gate.Weight, dense.Up.Weight, kAct, score, dense.Activation);
                    perLayer[l].Add(markers.to(ScalarType.Byte).DetachFromDisposeScope());  // [b*t, dh]
                    x = layer.AddFfnOutput(h, dense.forward(f));
                }
                progress?.Report(((int)Math.Min(start + batch, ids.shape[0]), (int)ids.shape[0]));
            }
            var merged = perLayer.Select(chunks => cat(chunks, 0)).ToList();
            return new ActivationProfile(merged, score, kAct);
        }
        finally
        {
            foreach (var list in perLayer) foreach (var t in list) t.Dispose();
        }
    }
}
