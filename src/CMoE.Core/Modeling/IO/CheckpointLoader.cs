using System.Text.Json.Nodes;
using TorchSharp;
using CMoE.Modeling.Weights;
using static TorchSharp.torch;

namespace CMoE.Modeling.IO;

/// <summary>
/// Loads a Hugging Face model folder: <c>config.json</c> and either <c>model.safetensors</c> or the
/// shards named by <c>model.safetensors.index.json</c>. Weights (bf16, fp16 or fp32 on disk) are
/// converted tensor by tensor into the requested dtype; shapes are checked against the config.
/// </summary>
public static class CheckpointLoader
{
    /// <summary>Reads the config, builds the model on the CPU, loads every weight, then moves it to <paramref name="device"/>.</summary>
    /// <param name="folder">The model folder.</param>
    /// <param name="dtype">Compute dtype (fp32 by default); the weights are stored in it too.</param>
    /// <param name="device">Target device; CPU when null.</param>
    /// <param name="configure">Called after the dense skeleton is built and before weights are loaded,
    /// to reshape it (e.g. replace FFNs by carved MoE blocks described in config.json).</param>
    public static LlamaForCausalLM Load(string folder, ScalarType dtype = ScalarType.Float32, Device? device = null,
        Action<LlamaForCausalLM, JsonObject>? configure = null) => Load(folder, Precision.Of(dtype), device, configure);

    /// <summary>
    /// Reads the config, builds the model on the CPU in <paramref name="precision"/> (null: fp32 activations over the weight
    /// format the folder records, fp32 when it records none), loads every weight (converting or quantizing tensor by tensor),
    /// then moves it to <paramref name="device"/>.
    /// </summary>
    public static LlamaForCausalLM Load(string folder, Precision? precision, Device? device = null,
        Action<LlamaForCausalLM, JsonObject>? configure = null)
    {
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"Model folder '{folder}' does not exist. Pass a Hugging Face model folder (config.json, *.safetensors, tokenizer).");
        var config = LlamaConfig.Load(folder);
        string configPath = Path.Combine(folder, "config.json");
        var raw = FormatGuard.Run(configPath, "Fix or re-download config.json.", () => JsonNode.Parse(File.ReadAllText(configPath, FormatGuard.StrictUtf8))!.AsObject());
        precision ??= Precision.Inference(FormatGuard.Run(configPath, "Re-create the folder with cmoe carve, or restore its config.json.", () => CarvedFolder.RecordedWeights(raw)));
        var model = new LlamaForCausalLM(config, precision);
        try
        {
            if (configure is not null)
                FormatGuard.Run(configPath, "Re-create the folder with cmoe carve, or restore its config.json.", () => { configure(model, raw); return 0; });
            LoadWeights(model, folder);
            if (device is not null && device.type != DeviceType.CPU) model.to(device);
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Lists the safetensors files of a folder: the shards of the index, or model.safetensors.</summary>
    public static IReadOnlyList<string> WeightFiles(string folder)
    {
        string index = Path.Combine(folder, "model.safetensors.index.json");
        if (File.Exists(index))
        {
            const string fix = "Re-download model.safetensors.index.json.";
            var names = FormatGuard.Run(index, fix, () =>
            {
                if (JsonNode.Parse(File.ReadAllText(index, FormatGuard.StrictUtf8))?["weight_map"] is not JsonObject map)
                    throw new CMoEFormatException($"'{index}' has no weight_map. {fix}");
                return map.Select(kv => kv.Value?.GetValue<string>() ?? "").ToList();
            });
            var files = new List<string>();
            foreach (var name in names)
            {
                if (name.Length == 0 || name.Contains('/') || name.Contains('\\') || name.Contains(".."))
                    throw new CMoEFormatException($"'{index}' names an invalid shard '{name}'. Shards must be files in the model folder.");
                string full = Path.Combine(folder, name);
                if (!files.Contains(full)) files.Add(full);
            }
            foreach (var f in files)
                if (!File.Exists(f))
                    throw new FileNotFoundException($"Shard '{f}' named by '{index}' is missing. Download every shard of the model.", f);
            return files;
        }
        string single = Path.Combine(folder, "model.safetensors");
        if (File.Exists(single)) return [single];
        if (File.Exists(Path.Combine(folder, "pytorch_model.bin")) || Directory.EnumerateFiles(folder, "pytorch_model*.bin").Any())
            throw new CMoEFormatException($"'{folder}' holds PyTorch .bin weights only. Convert them to safetensors (e.g. save_pretrained(..., safe_serialization=True)).");
        throw new FileNotFoundException($"No model.safetensors or model.safetensors.index.json in '{folder}'. Download the model's safetensors weights.");
    }

    /// <summary>Copies every parameter and buffer of <paramref name="model"/> from the folder's safetensors files.</summary>
    public static void LoadWeights(nn.Module model, string folder)
    {
        using var weights = WeightSet.Open(folder);
        weights.LoadInto(model, "");
    }
}

/// <summary>
/// The open safetensors files of a model folder, indexed by tensor name (one file handle each). A tensor the files do not
/// hold may be a row block of a fused one the family names (<see cref="Families.ModelFamily.FusedTensors"/>: Phi-3's
/// <c>qkv_proj</c>, <c>gate_up_proj</c>); it is then read as that block.
/// </summary>
internal sealed class WeightSet : IDisposable
{
    private readonly List<SafeTensorsFile> _files;
    private readonly Dictionary<string, SafeTensorsFile> _where = new(StringComparer.Ordinal);
    private readonly LlamaConfig? _config;

    private WeightSet(string folder, List<SafeTensorsFile> files)
    {
        Folder = folder;
        _files = files;
        try { _config = File.Exists(Path.Combine(folder, "config.json")) ? LlamaConfig.Load(folder) : null; }
        catch (CMoEFormatException) { _config = null; }   // no family: tensors are read by their own names only
        foreach (var f in files)
            foreach (var name in f.Tensors.Keys)
                _where[name] = f;
    }

    /// <summary>The model folder.</summary>
    public string Folder { get; }

    /// <summary>Opens every weight file of <paramref name="folder"/>.</summary>
    public static WeightSet Open(string folder)
    {
        var files = new List<SafeTensorsFile>();
        try
        {
            foreach (var path in CheckpointLoader.WeightFiles(folder)) files.Add(SafeTensorsFile.Open(path));
            return new WeightSet(folder, files);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    /// <summary>Whether the files hold <paramref name="name"/>, itself or as a block of a fused tensor.</summary>
    public bool Contains(string name) => _where.ContainsKey(name) || Block(name) is not null;

    /// <summary>The fused tensor and first row holding <paramref name="name"/> when the files hold it only that way, else null.</summary>
    private (string Fused, long Row)? Block(string name)
    {
        if (_config is null || _where.ContainsKey(name)) return null;
        foreach (var f in _config.Family.FusedTensors)
        {
            long row = 0;
            foreach (var (key, rows) in f.Parts)
            {
                if (name.EndsWith("." + key, StringComparison.Ordinal))
                {
                    string fused = name[..^key.Length] + f.Fused;
                    return _where.ContainsKey(fused) ? (fused, row) : null;
                }
                row += rows(_config);
            }
        }
        return null;
    }

    /// <summary>Reads tensor <paramref name="name"/> converted to <paramref name="dtype"/>, checking its shape.</summary>
    public Tensor Load(string name, ScalarType dtype, long[] shape)
    {
        if (Block(name) is var (fused, row))
        {
            var whole = _where[fused].Tensors[fused].Shape;
            if (whole.Length != shape.Length || row + shape[0] > whole[0] || !whole[1..].SequenceEqual(shape[1..]))
                throw new CMoEFormatException(
                    $"'{Folder}': fused tensor '{fused}' has shape [{string.Join(",", whole)}], which does not hold '{name}' [{string.Join(",", shape)}] at row {row}. The weights do not belong to this config.json.");
            using var all = _where[fused].Load(fused, dtype);
            return all.narrow(0, row, shape[0]).contiguous();
        }
        if (!_where.TryGetValue(name, out var file))
            throw new CMoEFormatException($"'{Folder}' lacks tensor '{name}' that the architecture needs. The checkpoint does not match config.json (tie_word_embeddings? architecture?).");
        var info = file.Tensors[name];
        if (!info.Shape.SequenceEqual(shape))
            throw new CMoEFormatException(
                $"'{file.Path}': tensor '{name}' has shape [{string.Join(",", info.Shape)}] but config.json implies [{string.Join(",", shape)}]. The weights do not belong to this config.json.");
        return file.Load(name, dtype);
    }

    /// <summary>
    /// Copies every parameter and buffer of <paramref name="module"/> from tensors named <paramref name="prefix"/> + its key. Weight
    /// matrices are filled in the module's storage format one tensor at a time (converted, or quantized to int8 while loading, so
    /// the peak is about the stored size plus one tensor); stored int8 weights (a low-bit folder) are copied as they are when the
    /// groups match, else dequantized and stored again.
    /// </summary>
    public void LoadInto(nn.Module module, string prefix)
    {
        var missing = new List<string>();
        using var noGrad = no_grad();
        var handled = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (key, weight) in StoredWeights.Of(module))
        {
            handled.Add(key);
            handled.Add(key + StoredWeights.ScaleSuffix);
            string name = prefix + key;
            if (!Contains(name)) { missing.Add(name); continue; }
            LoadWeight(name, weight);
        }
        foreach (var (key, target) in module.state_dict())
        {
            if (handled.Contains(key)) continue;
            string name = prefix + key;
            if (!Contains(name)) { missing.Add(name); continue; }
            using var value = Load(name, target.dtype, target.shape);
            target.copy_(value);
        }
        if (missing.Count > 0)
            throw new CMoEFormatException(
                $"'{Folder}' lacks {missing.Count} tensor(s) the architecture needs, e.g. {string.Join(", ", missing.Take(3))}. The checkpoint does not match config.json (tie_word_embeddings? architecture?).");
    }

    /// <summary>Fills one stored weight from tensor <paramref name="name"/> (and its scales when the file holds int8 values).</summary>
    private void LoadWeight(string name, StoredWeight weight)
    {
        using var scope = NewDisposeScope();
        string scaleName = name + StoredWeights.ScaleSuffix;
        string key = Block(name)?.Fused ?? name;
        var stored = _where[key].Tensors[key];
        if (stored.DType == "I8")
        {
            if (!_where.TryGetValue(scaleName, out var scaleFile))
                throw new CMoEFormatException($"'{Folder}' holds int8 values for '{name}' but not their scales '{scaleName}'. The folder is incomplete: write it again.");
            var values = Load(name, ScalarType.Int8, weight.Values.shape);
            var scaleInfo = scaleFile.Tensors[scaleName];
            var scales = scaleFile.Load(scaleName, ScalarType.Float32);
            if (scaleInfo.Shape.Length != values.dim() || scaleInfo.Shape[^1] < 1 || values.shape[^1] % scaleInfo.Shape[^1] != 0
                || !scaleInfo.Shape[..^1].SequenceEqual(values.shape[..^1]))
                throw new CMoEFormatException($"'{scaleFile.Path}': the scales '{scaleName}' [{string.Join(",", scaleInfo.Shape)}] do not fit the int8 values [{string.Join(",", values.shape)}]. The folder is corrupt: write it again.");
            if (weight.Scales is not null && weight.Scales.shape.SequenceEqual(scales.shape)) weight.AssignQuantized(values, scales);
            else weight.Assign(Int8Quantizer.Dequantize(values, scales, ScalarType.Float32));
            return;
        }
        var source = Load(name, weight.Scales is null ? weight.Values.dtype : ToFloat(stored.DType), weight.Values.shape);
        weight.Assign(source);
    }

    /// <summary>The float type to read a stored float tensor in before quantizing it (its own type: bf16 stays bf16).</summary>
    private static ScalarType ToFloat(string dtype) => dtype is "BF16" or "F16" or "F32" or "F64" ? SafeTensorsFile.ToScalarType(dtype) : ScalarType.Float32;

    /// <summary>Closes the files.</summary>
    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
    }
}
