using System.Diagnostics;
using System.Text.Json.Nodes;
using CMoE.Modeling;
using CMoE.Modeling.IO;
using CMoE.Modeling.MoE;
using static TorchSharp.torch;

namespace CMoE.Carving;

/// <summary>
/// Sequential CMoE carving straight from disk to disk, one decoder layer in memory at a time: the
/// embeddings turn the calibration windows into hidden states, then for each layer its dense weights are
/// read from the source safetensors, the layer is carved exactly as <see cref="MoeCarver.Carve"/> does,
/// its carved weights are appended to the output file and it is freed. Peak memory is about one dense
/// layer, the embedding table, the calibration activations and the markers, whatever the model size, so a
/// model larger than RAM can be carved. The output is byte-identical to carving in memory and saving with
/// <see cref="CarvedFolder.Save"/>.
/// </summary>
public static class StreamingCarver
{
    /// <summary>Carves the dense model in <paramref name="sourceFolder"/> into the carved folder <paramref name="outputFolder"/> (written atomically).</summary>
    public static CarveReport Carve(string sourceFolder, Tensor calibration, CarveOptions options, string outputFolder,
        JsonObject? provenance = null, IProgress<(int Done, int Total)>? progress = null, CancellationToken cancel = default)
    {
        var config = LlamaConfig.Load(sourceFolder);
        options.Validate(config.IntermediateSize);
        if (ModelFolder.IsCarved(sourceFolder))
            throw new ArgumentException($"'{sourceFolder}' is already carved; carve the dense model it came from.");
        if (calibration.dim() != 2 || calibration.shape[1] < 2)
            throw new ArgumentException("Calibration must be token windows [samples, seq_len] with seq_len >= 2.");
        var layout = options.Layout;
        int dh = config.IntermediateSize;
        var shape = new MoeShape(config.HiddenSize, layout.SharedSize(dh), layout.Routed, layout.ExpertSize(dh), layout.Active);
        var clock = Stopwatch.StartNew();
        var reports = new List<LayerCarveReport>();
        using var weights = WeightSet.Open(sourceFolder);
        AtomicFolder.Write(outputFolder, tmp =>
        {
            CarvedFolder.WriteConfigAndTokenizer(tmp, sourceFolder, shape, layout.ToString(), provenance);
            using var writer = new SafeTensorsStreamWriter(Path.Combine(tmp, "model.safetensors"), StateDictLayout.Specs(config, shape), CarvedFolder.WeightsMetadata);
            using var noGrad = no_grad();
            using var ids = calibration.to(ScalarType.Int64);
            using var rope = new RotaryEmbedding(config);
            var (cos, sin) = rope.Get(0, ids.shape[1], CPU, ScalarType.Float32);
            using var cosScope = cos;
            using var sinScope = sin;
            List<Tensor> hidden;
            var buffers = new List<(string Name, Tensor Value)>();   // written last: the model's state dict lists every parameter, then every buffer
            using (var embeddings = new TokenEmbedding(config.VocabSize, config.HiddenSize))
            {
                weights.LoadInto(embeddings, "model.embed_tokens.");
                hidden = MoeCarver.Batches(ids, options.Batch).Select(b => embeddings.forward(b)).ToList();   // [b, t, d] each
                WriteParameters(writer, embeddings, "model.embed_tokens.");
            }
            ReleaseFreedMemory();
            try
            {
                for (int l = 0; l < config.NumLayers; l++)
                {
                    cancel.ThrowIfCancellationRequested();
                    using var layer = new DecoderLayer(config);
                    layer.eval();
                    weights.LoadInto(layer, $"model.layers.{l}.");
                    reports.Add(MoeCarver.CarveLayerSequential(layer, l, ref hidden, cos, sin, options));
                    WriteParameters(writer, layer, $"model.layers.{l}.");
                    foreach (var (key, b) in layer.named_buffers()) buffers.Add(($"model.layers.{l}.{key}", b.clone().DetachFromDisposeScope()));
                    layer.Dispose();
                    ReleaseFreedMemory();
                    progress?.Report((l + 1, config.NumLayers));
                }
            }
            finally
            {
                MoeCarver.DisposeAll(hidden);
            }
            CopyThrough(weights, writer, "model.norm.weight", [config.HiddenSize]);
            if (!config.TieWordEmbeddings) CopyThrough(weights, writer, "lm_head.weight", [config.VocabSize, config.HiddenSize]);
            foreach (var (name, value) in buffers)
            {
                writer.Write(name, value);
                value.Dispose();
            }
            writer.Complete();
        });
        return new CarveReport(layout, clock.Elapsed.TotalSeconds, reports, layout.ActiveFraction);
    }

    /// <summary>
    /// Hands memory freed by the last layer back to the OS: finalizes tensor wrappers the GC still holds and,
    /// on Linux, asks glibc to trim its heaps (malloc keeps freed blocks otherwise, and the process would grow
    /// by a layer's size every few layers).
    /// </summary>
    private static void ReleaseFreedMemory()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        if (OperatingSystem.IsLinux())
        {
            try { MallocTrim(0); }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }   // not glibc
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "malloc_trim")]
    private static extern int MallocTrim(nuint pad);

    /// <summary>Writes a module's parameters (not its buffers: those come last in the file) under <paramref name="prefix"/>.</summary>
    private static void WriteParameters(SafeTensorsStreamWriter writer, nn.Module module, string prefix)
    {
        foreach (var (key, value) in module.named_parameters()) writer.Write(prefix + key, value);
    }

    private static void CopyThrough(WeightSet weights, SafeTensorsStreamWriter writer, string name, long[] shape)
    {
        using var value = weights.Load(name, ScalarType.Float32, shape);
        writer.Write(name, value);
    }
}
