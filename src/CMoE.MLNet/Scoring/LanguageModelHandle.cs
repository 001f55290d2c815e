using System.Collections.Concurrent;
using System.Text.Json.Nodes;
using CMoE.MLNet.Persistence;
using CMoE.Modeling;
using CMoE.Modeling.IO;
using CMoE.Modeling.MoE;
using CMoE.Modeling.Tokenization;
using CMoE.Modeling.Weights;
using static TorchSharp.torch;

namespace CMoE.MLNet.Scoring;

/// <summary>
/// A language model held by a CMoE transformer: the (dense or carved) model, its tokenizer, and a folder whose files
/// describe it exactly (the source Hugging Face folder, a carved folder, or a folder extracted from a model zip), so
/// saving never re-derives what is already on disk. Owns the model and any temporary folder it made.
/// </summary>
internal sealed class LanguageModelHandle : IDisposable
{
    /// <summary>Prefix of the payload entries holding the model folder's files (ML.NET reserves "Model.*").</summary>
    private const string EntryPrefix = "lm-";

    private static readonly ConcurrentDictionary<string, byte> TempFolders = new();
    private static int _exitHookInstalled;

    private readonly string _sourceFolder;   // config.json and tokenizer files of the model (for CarvedFolder.Save)
    private string? _exactFolder;            // a folder whose files are exactly Model, or null after in-memory changes
    private readonly FolderLease _folders;   // temporary folders, shared with clones, deleted when the last handle goes

    private LanguageModelHandle(LlamaForCausalLM model, TextTokenizer tokenizer, string sourceFolder, string? exactFolder, string? layout,
        FolderLease? folders = null)
    {
        _folders = folders?.Acquire() ?? new FolderLease();
        Model = model;
        Tokenizer = tokenizer;
        _sourceFolder = sourceFolder;
        _exactFolder = exactFolder;
        Layout = layout;
    }

    /// <summary>Payload entry file recording the weight format of a dense model held in bf16/int8 (see <see cref="AddTo"/>).</summary>
    internal const string WeightsRecordFile = "cmoe-weights.json";

    /// <summary>The model (CPU; fp32 activations, weights in <see cref="Weights"/>).</summary>
    public LlamaForCausalLM Model { get; private set; }

    /// <summary>The format the model's weights are held in.</summary>
    public WeightFormat Weights => Model.Precision.Weights;

    /// <summary>The tokenizer of the model folder.</summary>
    public TextTokenizer Tokenizer { get; }

    /// <summary>The MoE layout (e.g. "S2A2E16"), or null for a dense model.</summary>
    public string? Layout { get; private set; }

    /// <summary>Whether every FFN is an MoE block.</summary>
    public bool IsCarved => Model.Model.Layers.All(l => l.Mlp is MoeBlock);

    /// <summary>The MoE blocks (empty for a dense model).</summary>
    public IReadOnlyList<MoeBlock> Blocks => Model.Model.Layers.Select(l => l.Mlp).OfType<MoeBlock>().ToList();

    /// <summary>Provenance stored in a carved folder's config (layout, calibration, ...).</summary>
    public JsonObject? Provenance { get; set; }

    /// <summary>
    /// Loads a dense Hugging Face folder or a carved folder, with its weights in <paramref name="weights"/> (null: the folder's
    /// format, fp32 for a Hugging Face folder; bf16/int8 are converted tensor by tensor while loading).
    /// </summary>
    /// <exception cref="DirectoryNotFoundException">No such folder.</exception>
    public static LanguageModelHandle FromFolder(string folder, WeightFormat? weights = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"Model folder '{folder}' not found; pass a Hugging Face LLaMA folder (config.json, *.safetensors, tokenizer) or a carved folder.");
        string full = Path.GetFullPath(folder);
        var tokenizer = TokenizerLoader.FromFolder(full);
        var model = ModelFolder.Load(full, weights);
        // A carved folder is this model's exact copy only in the format it records; otherwise saving writes a fresh one.
        bool exact = !ModelFolder.IsCarved(full) || ModelFolder.RecordedWeights(full) == model.Precision.Weights;
        return new LanguageModelHandle(model, tokenizer, full, exact ? full : null, ReadLayout(full));
    }

    /// <summary>
    /// Holds the weights in <paramref name="weights"/> from now on (null or the current format: nothing changes): the model is
    /// converted (bf16, or int8 quantized matrix by matrix) and the fp32 copy freed. Stages that carve or train call this last.
    /// </summary>
    public void UseWeights(WeightFormat? weights)
    {
        if (weights is null || weights == Weights) return;
        var converted = ModelConversion.Convert(Model, weights);
        Model.Dispose();
        Model = converted;
        if (IsCarved) _exactFolder = null;   // a carved folder records its format: the next save writes one in the new format
    }

    /// <summary>Throws naming <paramref name="stage"/> unless the weights are fp32 (profiling, carving and training need them).</summary>
    public void RequireFp32(string stage)
    {
        if (Weights.Kind != WeightKind.Fp32)
            throw new InvalidOperationException(
                $"{stage}: the upstream stage holds its model in {Weights} weights, and {stage} needs fp32 weights. Set Weights only on the last stage of the chain (leave it null upstream).");
    }

    /// <summary>An independent copy (same tokenizer, copied weights), so one stage can change it without touching another's.</summary>
    public LanguageModelHandle Clone()
    {
        var copy = new LlamaForCausalLM(Model.Config, Model.Precision);
        for (int i = 0; i < Model.Model.Layers.Count; i++)
            if (Model.Model.Layers[i].Mlp is MoeBlock block)
                copy.Model.Layers[i].ReplaceMlp(new MoeBlock(block.Shape, Model.Precision) { ActiveExperts = block.ActiveExperts });
        using (no_grad())
        {
            var target = copy.state_dict();
            foreach (var (key, value) in Model.state_dict()) target[key].copy_(value);
        }
        return new LanguageModelHandle(copy, Tokenizer, _sourceFolder, _exactFolder, Layout, _folders) { Provenance = Provenance?.DeepClone().AsObject() };
    }

    /// <summary>Records that the weights (or layout) changed in memory: the next save writes a fresh carved folder.</summary>
    public void MarkChanged(string? layout)
    {
        _exactFolder = null;
        Layout = layout;
    }

    // Header layout (inside the transformer's own header, written by AddTo, read by Load):
    //   i32 N, then N x string file name (payload entry "lm-" + name holds the file's bytes).
    // The files are a model folder: a carved model's is a carved folder in the weights it is held in (format version 2 for
    // bf16/int8, so they are stored as such); a dense model's is its source checkpoint, unchanged, plus, when it is held in
    // bf16 or int8, "cmoe-weights.json" = {"weights": "int8:64"}, the format Load converts it to (quantization is
    // deterministic: the reloaded weights are identical).
    /// <summary>Writes the model's file list into the payload header and adds the files as entries.</summary>
    public void AddTo(ModelPayload payload)
    {
        string folder = EnsureFolder();
        var files = ModelFiles(folder);
        bool record = !IsCarved && Weights.Kind != WeightKind.Fp32;
        payload.Header.Write(files.Count + (record ? 1 : 0));
        foreach (string file in files)
        {
            payload.Header.Write(file);
            payload.AddFile(EntryPrefix + file, Path.Combine(folder, file));
        }
        if (record)
        {
            payload.Header.Write(WeightsRecordFile);
            payload.Add(EntryPrefix + WeightsRecordFile, System.Text.Encoding.UTF8.GetBytes(new JsonObject { ["weights"] = Weights.ToString() }.ToJsonString()));
        }
    }

    /// <summary>The weight format a zip's <see cref="WeightsRecordFile"/> names, or null when the folder has none.</summary>
    private static WeightFormat? RecordedZipWeights(string folder)
    {
        string path = Path.Combine(folder, WeightsRecordFile);
        if (!File.Exists(path)) return null;
        try
        {
            return WeightFormat.Parse(JsonNode.Parse(File.ReadAllText(path))?["weights"]?.GetValue<string>() ?? "");
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or ArgumentException)
        {
            throw new CMoEFormatException($"The model zip's {WeightsRecordFile} does not name a weight format this CMoE.MLNet knows ({e.Message}). Upgrade CMoE.MLNet, or save the model again.", e);
        }
    }

    /// <summary>Extracts the model files listed in the header into a temporary folder and loads them.</summary>
    public static LanguageModelHandle Load(ModelPayloadReader payload)
    {
        int count = payload.Header.ReadInt32();
        if (count is < 1 or > 10_000)
            throw new CMoEFormatException($"The CMoE language-model entry lists {count} model files; the model zip is corrupt. Save it again.");
        string folder = NewTempFolder("cmoe-zip-");
        Directory.CreateDirectory(folder);
        try
        {
            for (int i = 0; i < count; i++)
            {
                string file = payload.Header.ReadString();
                if (file.Contains('/') || file.Contains('\\') || file.StartsWith('.'))
                    throw new CMoEFormatException($"The CMoE language-model entry names an invalid file '{file}'; the model zip is corrupt.");
                payload.ExtractTo(EntryPrefix + file, Path.Combine(folder, file));
            }
            var handle = FromFolder(folder, RecordedZipWeights(folder));
            handle._folders.Add(folder);
            return handle;
        }
        catch
        {
            DeleteTemp(folder);
            throw;
        }
    }

    /// <summary>A folder holding exactly this model: the known one, or a carved folder written now to a temporary place.</summary>
    private string EnsureFolder()
    {
        if (_exactFolder is not null && Directory.Exists(_exactFolder)) return _exactFolder;
        if (!IsCarved)
        {
            if (Weights.Kind != WeightKind.Fp32)
                throw new InvalidOperationException($"A dense model changed in memory is saved in fp32 only (it is held in {Weights}); train in fp32 and set the weights after saving.");
            string dense = NewTempFolder("cmoe-dense-");
            WriteDenseFolder(dense);
            _folders.Add(dense);
            _exactFolder = dense;
            return dense;
        }
        string folder = NewTempFolder("cmoe-carved-");
        CarvedFolder.Save(Model, _sourceFolder, folder, Layout ?? "unknown", Provenance);   // in the model's weight format
        _folders.Add(folder);
        _exactFolder = folder;
        return folder;
    }

    /// <summary>
    /// A dense model changed in memory (e.g. a fine-tuned classifier backbone) as a Hugging Face folder: the source config.json
    /// (dtype float32), one fp32 model.safetensors with the Hugging Face keys, the tokenizer files.
    /// </summary>
    private void WriteDenseFolder(string folder)
    {
        AtomicFolder.Write(folder, tmp =>
        {
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(_sourceFolder, "config.json")))!.AsObject();
            config["torch_dtype"] = "float32";
            if (config.ContainsKey("dtype")) config["dtype"] = "float32";
            File.WriteAllText(Path.Combine(tmp, "config.json"), config.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            var tensors = Model.state_dict().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)).ToList();
            SafeTensorsWriter.Write(Path.Combine(tmp, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
            foreach (string file in CarvedFolder.TokenizerFiles)
                if (File.Exists(Path.Combine(_sourceFolder, file))) File.Copy(Path.Combine(_sourceFolder, file), Path.Combine(tmp, file));
        });
    }

    /// <summary>The files of a model folder that make the model: config, weights (and index), tokenizer files.</summary>
    private static List<string> ModelFiles(string folder)
    {
        var files = new List<string> { "config.json" };
        files.AddRange(Directory.GetFiles(folder, "*.safetensors").Select(Path.GetFileName).Order(StringComparer.Ordinal)!);
        if (File.Exists(Path.Combine(folder, "model.safetensors.index.json"))) files.Add("model.safetensors.index.json");
        files.AddRange(CarvedFolder.TokenizerFiles.Where(f => File.Exists(Path.Combine(folder, f))));
        return files;
    }

    private static string? ReadLayout(string folder)
    {
        try
        {
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "config.json")))?.AsObject();
            return config?["cmoe"]?["layout"]?.GetValue<string>();
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or IOException)
        {
            return null;
        }
    }

    private static string NewTempFolder(string prefix)
    {
        if (Interlocked.Exchange(ref _exitHookInstalled, 1) == 0)
            AppDomain.CurrentDomain.ProcessExit += (_, _) =>
            {
                foreach (string f in TempFolders.Keys) DeleteTemp(f);
            };
        string folder = Path.Combine(Path.GetTempPath(), prefix + Guid.NewGuid().ToString("N"));
        TempFolders[folder] = 0;
        return folder;
    }

    private static void DeleteTemp(string folder)
    {
        TempFolders.TryRemove(folder, out _);
        try
        {
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>Frees the model and deletes the temporary folders this handle made.</summary>
    public void Dispose()
    {
        Model.Dispose();
        _folders.Release();
    }

    /// <summary>Temporary folders shared by a handle and its clones; deleted when the last of them is disposed.</summary>
    private sealed class FolderLease
    {
        private readonly List<string> _folders = [];
        private int _holders = 1;

        public FolderLease Acquire()
        {
            Interlocked.Increment(ref _holders);
            return this;
        }

        public void Add(string folder)
        {
            lock (_folders) _folders.Add(folder);
        }

        public void Release()
        {
            if (Interlocked.Decrement(ref _holders) != 0) return;
            lock (_folders)
            {
                foreach (string f in _folders) DeleteTemp(f);
                _folders.Clear();
            }
        }
    }
}
