using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using CMoE.Modeling.IO;
using static TorchSharp.torch;

namespace CMoE.Carving;

/// <summary>
/// The in-progress state of a streaming carve, kept in the staging folder <c>&lt;out&gt;.partial</c> beside the output so
/// a killed carve can continue from its last completed layer (<c>cmoe carve --streaming --resume</c>) and end with the
/// same bytes as an uninterrupted one. Layout (format <c>cmoe-carve-partial</c>, version 1):
/// <list type="bullet">
/// <item><c>model.safetensors.partial</c>: the output's model.safetensors as far as it is written (the whole header, then
/// the tensors in header order); bytes past the last committed layer are cut off on resume.</item>
/// <item><c>state-NNNN.safetensors</c>: after NNNN completed layers, the calibration hidden states that enter layer NNNN
/// (<c>hidden.{b}</c>, one [b, t, d] fp32 tensor per batch) and the carved layers' buffers written at the end of the model
/// file (<c>model.layers.{i}.mlp.shared_neurons</c>, ...).</item>
/// <item><c>manifest.json</c>: <c>{"format", "version", "inputs": {"source": {file name: {"bytes", "modified_utc"}, "config.json sha256"},
/// "options": {layout, k_act, score, iterations, batch}, "calibration": {"shape", "sha256"}, "provenance": {..}},
/// "layers_total", "layers_done", "tensors_written", "state", "reports": [..]}</c>: what the carve was started from and
/// how far it got.</item>
/// </list>
/// A layer is committed in this order: its tensors are appended to the model file and flushed to disk, the state file is
/// written (temporary name, flushed, renamed), then the manifest (same), then the previous state file is deleted. The
/// manifest's rename is the commit point: a kill anywhere leaves a manifest that describes bytes and a state file that exist.
/// Carving draws no random numbers (calibration windows are drawn before it, from the seed; the partition is deterministic),
/// and the state file holds the exact hidden states, so a resumed carve computes the same bits as an uninterrupted one.
/// </summary>
internal sealed class CarveCheckpoint
{
    /// <summary>Format name in manifest.json.</summary>
    public const string FormatName = "cmoe-carve-partial";

    /// <summary>The manifest version this build writes and reads.</summary>
    public const int FormatVersion = 1;

    /// <summary>The model file's name inside the staging folder.</summary>
    public const string ModelFile = "model.safetensors.partial";

    private const string ManifestFile = "manifest.json";

    private CarveCheckpoint(string folder, JsonObject inputs, int layersTotal)
    {
        Folder = folder;
        Inputs = inputs;
        LayersTotal = layersTotal;
    }

    /// <summary>The staging folder.</summary>
    public string Folder { get; }

    /// <summary>What the carve is computed from (compared on resume).</summary>
    public JsonObject Inputs { get; }

    /// <summary>Decoder layers of the model.</summary>
    public int LayersTotal { get; }

    /// <summary>Layers completed and committed.</summary>
    public int LayersDone { get; private set; }

    /// <summary>Tensors of the model file's header written through the last committed layer.</summary>
    public int TensorsWritten { get; private set; }

    /// <summary>The per-layer reports of the committed layers.</summary>
    public List<LayerCarveReport> Reports { get; } = [];

    /// <summary>The path of the model file being written.</summary>
    public string ModelPath => Path.Combine(Folder, ModelFile);

    private string? StateFile { get; set; }

    /// <summary>The staging folder of output folder <paramref name="outputFolder"/>: <c>&lt;out&gt;.partial</c> beside it.</summary>
    public static string FolderFor(string outputFolder) => Path.GetFullPath(outputFolder.TrimEnd('/', '\\')) + ".partial";

    /// <summary>
    /// The record of what a carve is computed from: the source folder's files (name, length, modification time; the
    /// SHA-256 of config.json), the options (with the thread count), the calibration windows' SHA-256 and the caller's provenance (calibration
    /// file, samples, seq_len, seed, ...).
    /// </summary>
    public static JsonObject DescribeInputs(string sourceFolder, Tensor calibration, CarveOptions options, JsonObject? provenance)
    {
        var source = new JsonObject();
        foreach (var file in Directory.GetFiles(sourceFolder).Order(StringComparer.Ordinal))
        {
            var info = new FileInfo(file);
            source[info.Name] = new JsonObject { ["bytes"] = info.Length, ["modified_utc"] = info.LastWriteTimeUtc.ToString("O") };
        }
        source["config.json sha256"] = Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(Path.Combine(sourceFolder, "config.json"))));
        using var ids = calibration.to(ScalarType.Int64).contiguous();
        return new JsonObject
        {
            ["source"] = source,
            ["options"] = new JsonObject
            {
                ["layout"] = options.Layout.ToString(),
                ["k_act"] = options.KAct,
                ["score"] = options.Score.ToString().ToLowerInvariant(),
                ["iterations"] = options.Iterations,
                ["batch"] = options.Batch,
                // libtorch's reductions split by thread count, so the same bytes need the same count.
                ["threads"] = Modeling.Backend.TorchRuntime.Threads,
            },
            ["calibration"] = new JsonObject
            {
                ["shape"] = new JsonArray(ids.shape.Select(d => (JsonNode)d).ToArray()),
                ["sha256"] = Convert.ToHexString(SHA256.HashData(ids.bytes)),
            },
            ["provenance"] = provenance?.DeepClone(),
        };
    }

    /// <summary>Whether <paramref name="folder"/> holds a committed checkpoint (a manifest).</summary>
    public static bool Exists(string folder) => File.Exists(Path.Combine(folder, ManifestFile));

    /// <summary>Starts a new checkpoint in an empty staging folder (any previous content is deleted).</summary>
    public static CarveCheckpoint Start(string folder, JsonObject inputs, int layersTotal)
    {
        if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        Directory.CreateDirectory(folder);
        return new CarveCheckpoint(folder, inputs, layersTotal);
    }

    /// <summary>
    /// Opens the checkpoint in <paramref name="folder"/> and checks that it was started from <paramref name="inputs"/>.
    /// </summary>
    /// <exception cref="CMoEFormatException">The manifest is unreadable, from another version, or its state file is missing.</exception>
    /// <exception cref="ArgumentException">The checkpoint was started from other inputs (the message names the first difference).</exception>
    public static CarveCheckpoint Open(string folder, JsonObject inputs, int layersTotal)
    {
        string path = Path.Combine(folder, ManifestFile);
        string fix = $"Delete '{folder}' and rerun without --resume to start over.";
        var manifest = FormatGuard.Run(path, fix, () => JsonNode.Parse(File.ReadAllText(path, FormatGuard.StrictUtf8))!.AsObject());
        var checkpoint = FormatGuard.Run(path, fix, () =>
        {
            string format = manifest["format"]?.GetValue<string>() ?? "";
            int version = manifest["version"]?.GetValue<int>() ?? 0;
            if (format != FormatName || version != FormatVersion)
                throw new CMoEFormatException($"'{path}' is '{format}' version {version}; this CMoE.MLNet resumes '{FormatName}' version {FormatVersion}. {fix}");
            var checkpoint = new CarveCheckpoint(folder, inputs, layersTotal)
            {
                LayersDone = manifest["layers_done"]!.GetValue<int>(),
                TensorsWritten = manifest["tensors_written"]!.GetValue<int>(),
                StateFile = manifest["state"]?.GetValue<string>(),
            };
            if (manifest["layers_total"]!.GetValue<int>() != layersTotal || checkpoint.LayersDone < 1 || checkpoint.LayersDone > layersTotal
                || checkpoint.StateFile is null || checkpoint.StateFile.Contains('/') || checkpoint.StateFile.Contains('\\')
                || !File.Exists(Path.Combine(folder, checkpoint.StateFile)) || !File.Exists(checkpoint.ModelPath))
                throw new CMoEFormatException($"'{path}' records {checkpoint.LayersDone} of {layersTotal} layers but its files are missing or inconsistent. {fix}");
            foreach (var r in manifest["reports"]!.AsArray())
                checkpoint.Reports.Add(new LayerCarveReport(r!["layer"]!.GetValue<int>(), r["profile_seconds"]!.GetValue<double>(),
                    r["partition_seconds"]!.GetValue<double>(), r["assignment_cost"]!.GetValue<double>()));
            return checkpoint;
        });
        if (Difference(manifest["inputs"], inputs, "") is { } diff)
            throw new ArgumentException(
                $"--resume: the interrupted carve in '{folder}' was started with {diff}. Rerun with the same model, calibration and options to continue it, or delete '{folder}' and rerun without --resume to start over.");
        return checkpoint;
    }

    /// <summary>
    /// Loads the committed state: the hidden states entering the next layer (one tensor per batch) and the buffers of
    /// the layers done, in the order they were produced.
    /// </summary>
    public (List<Tensor> Hidden, List<(string Name, Tensor Value)> Buffers) LoadState()
    {
        using var file = SafeTensorsFile.Open(Path.Combine(Folder, StateFile!));
        var batches = file.Tensors.Keys.Where(n => n.StartsWith("hidden.", StringComparison.Ordinal)).ToList();
        var hidden = Enumerable.Range(0, batches.Count).Select(b => file.Load($"hidden.{b}")).ToList();   // [b, t, d] each, in batch order
        var buffers = file.Tensors.Keys.Except(batches).Select(n => (n, file.Load(n))).ToList();       // in the order produced
        return (hidden, buffers);
    }

    /// <summary>
    /// Commits layer <paramref name="report"/>.Layer: the model file's tensors through it must already be written and
    /// flushed (<paramref name="tensorsWritten"/> of them); writes the state that enters the next layer, then the manifest.
    /// </summary>
    public void Commit(LayerCarveReport report, int tensorsWritten, IReadOnlyList<Tensor> hidden, IReadOnlyList<(string Name, Tensor Value)> buffers)
    {
        string state = $"state-{report.Layer + 1:D4}.safetensors";
        var tensors = hidden.Select((h, b) => new KeyValuePair<string, Tensor>($"hidden.{b}", h))
            .Concat(buffers.Select(x => new KeyValuePair<string, Tensor>(x.Name, x.Value)));
        SafeTensorsWriter.Write(Path.Combine(Folder, state), tensors);          // temporary name, flushed, moved
        string? previous = StateFile;
        LayersDone = report.Layer + 1;
        TensorsWritten = tensorsWritten;
        StateFile = state;
        Reports.Add(report);
        WriteManifest();
        if (previous is not null && previous != state) File.Delete(Path.Combine(Folder, previous));
    }

    private void WriteManifest()
    {
        var reports = new JsonArray();
        foreach (var r in Reports)
            reports.Add(new JsonObject
            {
                ["layer"] = r.Layer, ["profile_seconds"] = r.ProfileSeconds, ["partition_seconds"] = r.PartitionSeconds, ["assignment_cost"] = r.AssignmentCost,
            });
        var manifest = new JsonObject
        {
            ["format"] = FormatName,
            ["version"] = FormatVersion,
            ["inputs"] = Inputs.DeepClone(),
            ["layers_total"] = LayersTotal,
            ["layers_done"] = LayersDone,
            ["tensors_written"] = TensorsWritten,
            ["state"] = StateFile,
            ["reports"] = reports,
        };
        string path = Path.Combine(Folder, ManifestFile), tmp = path + ".tmp";
        using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            f.Write(Encoding.UTF8.GetBytes(manifest.ToJsonString(new JsonSerializerOptions { WriteIndented = true })));
            f.Flush(flushToDisk: true);
        }
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>The first difference between the recorded and the current inputs, as "key X = a (this command: b)", or null.</summary>
    private static string? Difference(JsonNode? recorded, JsonNode? current, string path)
    {
        if (recorded is JsonObject a && current is JsonObject b)
        {
            foreach (var key in a.Select(kv => kv.Key).Union(b.Select(kv => kv.Key)))
                if (Difference(a[key], b[key], path.Length == 0 ? key : $"{path}.{key}") is { } d) return d;
            return null;
        }
        string x = recorded?.ToJsonString() ?? "(none)", y = current?.ToJsonString() ?? "(none)";
        return x == y ? null : $"{Describe(path)} = {x} (this command: {y})";
    }

    private static string Describe(string path) =>
        path.StartsWith("source.", StringComparison.Ordinal) ? $"source file {path["source.".Length..]}"
        : path.StartsWith("options.", StringComparison.Ordinal) ? $"option {path["options.".Length..]}"
        : path.StartsWith("provenance.", StringComparison.Ordinal) ? $"calibration setting {path["provenance.".Length..]}"
        : path.StartsWith("calibration.", StringComparison.Ordinal) ? $"calibration windows' {path["calibration.".Length..]}"
        : path;
}
