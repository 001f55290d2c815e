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
/// <remarks>
/// The carve is built in the staging folder <c>&lt;out&gt;.partial</c> and committed layer by layer (see
/// <see cref="CarveCheckpoint"/>): a killed or cancelled carve leaves it behind, and a call with <c>resume</c> continues
/// from the last completed layer to the same bytes an uninterrupted carve writes. When every layer is done the model
/// file is moved into a temporary output folder with config.json and the tokenizer files, that folder replaces the
/// output (<see cref="AtomicFolder"/>), and the staging folder is deleted.
/// </remarks>
public static class StreamingCarver
{
    /// <summary>
    /// Test hook: after this many layers the carve stops where it is (it writes one line on stderr and sleeps) so a
    /// test can kill the process at a known point. With <see cref="HaltBeforeCommitVariable"/> = 1 it stops after
    /// writing that layer's tensors but before committing it.
    /// </summary>
    internal const string HaltAfterLayerVariable = "CMOE_TEST_HALT_AFTER_LAYER";

    /// <summary>See <see cref="HaltAfterLayerVariable"/>.</summary>
    internal const string HaltBeforeCommitVariable = "CMOE_TEST_HALT_BEFORE_COMMIT";

    /// <summary>The staging folder a streaming carve into <paramref name="outputFolder"/> keeps its progress in.</summary>
    public static string StagingFolder(string outputFolder) => CarveCheckpoint.FolderFor(outputFolder);

    /// <summary>Whether an interrupted streaming carve into <paramref name="outputFolder"/> left a committed layer to resume from.</summary>
    public static bool HasInterruptedCarve(string outputFolder) => CarveCheckpoint.Exists(StagingFolder(outputFolder));

    /// <summary>
    /// Carves the dense model in <paramref name="sourceFolder"/> into the carved folder <paramref name="outputFolder"/>
    /// (written atomically), keeping its progress in <see cref="StagingFolder"/>.
    /// </summary>
    /// <param name="sourceFolder">The dense model folder.</param>
    /// <param name="calibration">Calibration token windows [samples, seq_len].</param>
    /// <param name="options">Layout and knobs.</param>
    /// <param name="outputFolder">The carved folder to write.</param>
    /// <param name="provenance">Stored in config.json; part of what a resumed carve must match.</param>
    /// <param name="progress">Receives (layers done, layers total).</param>
    /// <param name="cancel">Cancels between layers; the staging folder is kept for <paramref name="resume"/>.</param>
    /// <param name="resume">Continue the interrupted carve in the staging folder (it must have been started from the same
    /// source, calibration, options and provenance); without it an interrupted carve there is an error. With no
    /// interrupted carve to continue, the carve starts from the first layer.</param>
    /// <exception cref="ArgumentException">An interrupted carve is in the way (without <paramref name="resume"/>), or it
    /// was started from other inputs (with it); the message names the difference and the fix.</exception>
    public static CarveReport Carve(string sourceFolder, Tensor calibration, CarveOptions options, string outputFolder,
        JsonObject? provenance = null, IProgress<(int Done, int Total)>? progress = null, CancellationToken cancel = default,
        bool resume = false)
    {
        var config = LlamaConfig.Load(sourceFolder);
        options.Validate(config.IntermediateSize);
        if (options.Routing != RouterSelection.TopK)
            throw new ArgumentException("Streaming carving writes the authors' top-a router; carve in memory for threshold routing (dynamic-K).");
        if (ModelFolder.IsCarved(sourceFolder))
            throw new ArgumentException($"'{sourceFolder}' is already carved; carve the dense model it came from.");
        if (calibration.dim() != 2 || calibration.shape[1] < 2)
            throw new ArgumentException("Calibration must be token windows [samples, seq_len] with seq_len >= 2.");
        var layout = options.Layout;
        int dh = config.IntermediateSize;
        var shape = new MoeShape(config.HiddenSize, layout.SharedSize(dh), layout.Routed, layout.ExpertSize(dh), layout.Active, config.Activation);
        var clock = Stopwatch.StartNew();
        string staging = StagingFolder(outputFolder);
        var inputs = CarveCheckpoint.DescribeInputs(sourceFolder, calibration, options, provenance);
        CarveCheckpoint checkpoint;
        if (CarveCheckpoint.Exists(staging))
        {
            if (!resume)
                throw new ArgumentException($"'{staging}' holds an interrupted carve of '{outputFolder}'. Add --resume to continue it from its last completed layer, or delete '{staging}' to start over.");
            checkpoint = CarveCheckpoint.Open(staging, inputs, config.NumLayers);
        }
        else
        {
            checkpoint = CarveCheckpoint.Start(staging, inputs, config.NumLayers);     // a folder without a manifest holds nothing committed
        }
        try
        {
            var report = Build(sourceFolder, calibration, options, outputFolder, provenance, progress, cancel, config, shape, checkpoint);
            Directory.Delete(staging, recursive: true);
            return report with { Seconds = clock.Elapsed.TotalSeconds };
        }
        catch when (checkpoint.LayersDone == 0 && Directory.Exists(staging))
        {
            Directory.Delete(staging, recursive: true);   // nothing committed: nothing to resume, no folder left behind
            throw;
        }
    }

    /// <summary>Carves the layers <paramref name="checkpoint"/> has not done, committing each, and writes the output folder.</summary>
    private static CarveReport Build(string sourceFolder, Tensor calibration, CarveOptions options, string outputFolder, JsonObject? provenance,
        IProgress<(int Done, int Total)>? progress, CancellationToken cancel, LlamaConfig config, MoeShape shape, CarveCheckpoint checkpoint)
    {
        var layout = options.Layout;
        string staging = checkpoint.Folder;
        var specs = StateDictLayout.Specs(config, shape);
        string fix = $"Delete '{staging}' and rerun without --resume to start over.";
        using var weights = WeightSet.Open(sourceFolder);
        using var noGrad = no_grad();
        using var ids = calibration.to(ScalarType.Int64);
        using var rope = new RotaryEmbedding(config);
        var (cos, sin) = rope.Get(0, ids.shape[1], CPU, ScalarType.Float32);
        using var cosScope = cos;
        using var sinScope = sin;
        List<Tensor> hidden;
        List<(string Name, Tensor Value)> buffers;   // written last: the model's state dict lists every parameter, then every buffer
        SafeTensorsStreamWriter writer;
        if (checkpoint.LayersDone == 0)
        {
            writer = SafeTensorsStreamWriter.Continue(checkpoint.ModelPath, specs, CarvedFolder.WeightsMetadata, 0, fix);
            buffers = [];
            using var embeddings = new TokenEmbedding(config.VocabSize, config.HiddenSize, scaleBySqrtHidden: config.ScaleEmbeddings);
            weights.LoadInto(embeddings, "model.embed_tokens.");
            hidden = MoeCarver.Batches(ids, options.Batch).Select(b => embeddings.forward(b)).ToList();   // [b, t, d] each
            WriteParameters(writer, embeddings, "model.embed_tokens.");
        }
        else
        {
            (hidden, buffers) = checkpoint.LoadState();
            writer = SafeTensorsStreamWriter.Continue(checkpoint.ModelPath, specs, CarvedFolder.WeightsMetadata, checkpoint.TensorsWritten, fix);
            progress?.Report((checkpoint.LayersDone, config.NumLayers));
        }
        ReleaseFreedMemory();
        try
        {
            for (int l = checkpoint.LayersDone; l < config.NumLayers; l++)
            {
                cancel.ThrowIfCancellationRequested();
                using var layer = new DecoderLayer(config);
                layer.eval();
                weights.LoadInto(layer, $"model.layers.{l}.");
                var report = MoeCarver.CarveLayerSequential(layer, l, ref hidden, cos, sin, options);
                WriteParameters(writer, layer, $"model.layers.{l}.");
                foreach (var (key, b) in layer.named_buffers()) buffers.Add(($"model.layers.{l}.{key}", b.clone().DetachFromDisposeScope()));
                layer.Dispose();
                writer.Flush();
                HaltForTests(l + 1, beforeCommit: true);
                checkpoint.Commit(report, writer.Written, hidden, buffers);
                HaltForTests(l + 1, beforeCommit: false);
                ReleaseFreedMemory();
                progress?.Report((l + 1, config.NumLayers));
            }
            CopyThrough(weights, writer, "model.norm.weight", [config.HiddenSize]);
            if (!config.TieWordEmbeddings) CopyThrough(weights, writer, "lm_head.weight", [config.VocabSize, config.HiddenSize]);
            foreach (var (name, value) in buffers) writer.Write(name, value);
            writer.Complete();
        }
        finally
        {
            writer.Dispose();                    // the staging file stays for --resume
            MoeCarver.DisposeAll(hidden);
            MoeCarver.DisposeAll(buffers.Select(b => b.Value));
        }
        AtomicFolder.Write(outputFolder, tmp =>
        {
            CarvedFolder.WriteConfigAndTokenizer(tmp, sourceFolder, shape, layout.ToString(), provenance);
            File.Move(checkpoint.ModelPath, Path.Combine(tmp, "model.safetensors"));   // last: a failure before it keeps the staging file
        });
        return new CarveReport(layout, 0, checkpoint.Reports, layout.ActiveFraction);
    }

    /// <summary>The <see cref="HaltAfterLayerVariable"/> test hook.</summary>
    private static void HaltForTests(int layersDone, bool beforeCommit)
    {
        if (Environment.GetEnvironmentVariable(HaltAfterLayerVariable) != layersDone.ToString(System.Globalization.CultureInfo.InvariantCulture)) return;
        if ((Environment.GetEnvironmentVariable(HaltBeforeCommitVariable) == "1") != beforeCommit) return;
        Console.Error.WriteLine($"halted after layer {layersDone} ({(beforeCommit ? "before" : "after")} its commit) for {HaltAfterLayerVariable}");
        Console.Error.Flush();
        Thread.Sleep(Timeout.Infinite);
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
