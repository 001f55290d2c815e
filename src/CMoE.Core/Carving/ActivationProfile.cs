using CMoE.Modeling.IO;
using static TorchSharp.torch;

namespace CMoE.Carving;

/// <summary>
/// Activation markers of every FFN layer on a calibration set (method section 1): for layer l, a
/// [tokens, d_h] uint8 0/1 matrix with K_a ones per token. Computed once (on the dense model, see
/// <see cref="ActivationProfiler"/>), it can carve any number of layouts without re-profiling.
/// </summary>
public sealed class ActivationProfile : IDisposable
{
    private readonly Tensor[] _markers;

    /// <summary>Wraps per-layer markers; the profile owns (and disposes) them.</summary>
    public ActivationProfile(IReadOnlyList<Tensor> markers, ActivationScore score, int kAct)
    {
        if (markers.Count == 0) throw new ArgumentException("A profile needs at least one layer.");
        _markers = markers.Select(m => m.to(ScalarType.Byte).DetachFromDisposeScope()).ToArray();
        Score = score;
        KAct = kAct;
    }

    /// <summary>The score the markers were computed with.</summary>
    public ActivationScore Score { get; }
    /// <summary>K_a.</summary>
    public int KAct { get; }
    /// <summary>Number of layers profiled.</summary>
    public int Layers => _markers.Length;
    /// <summary>Calibration tokens q.</summary>
    public long Tokens => _markers[0].shape[0];
    /// <summary>FFN width d_h.</summary>
    public long IntermediateSize => _markers[0].shape[1];

    /// <summary>Markers of one layer [q, d_h] (uint8 0/1); owned by the profile.</summary>
    public Tensor Markers(int layer) => _markers[layer];

    /// <summary>Activation rates mu of one layer [d_h].</summary>
    public float[] Rates(int layer)
    {
        using var rates = _markers[layer].to(ScalarType.Float32).mean([0]);
        return rates.data<float>().ToArray();
    }

    /// <summary>
    /// Saves the profile as safetensors: tensors <c>markers.{l}</c> (U8 [q, d_h]) and metadata
    /// <c>format = cmoe-profile</c>, <c>version = 1</c>, <c>score</c>, <c>k_act</c>.
    /// </summary>
    public void Save(string path) =>
        SafeTensorsWriter.Write(path,
            _markers.Select((m, l) => new KeyValuePair<string, Tensor>($"markers.{l}", m)),
            new Dictionary<string, string>
            {
                ["format"] = FormatName,
                ["version"] = "1",
                ["score"] = Score.ToString(),
                ["k_act"] = KAct.ToString(System.Globalization.CultureInfo.InvariantCulture),
            });

    /// <summary>Format name in the saved file's metadata.</summary>
    public const string FormatName = "cmoe-profile";

    /// <summary>Loads a profile written by <see cref="Save"/>.</summary>
    /// <exception cref="CMoEFormatException">The file is not a CMoE profile of a known version.</exception>
    public static ActivationProfile Load(string path)
    {
        using var file = SafeTensorsFile.Open(path);
        if (!file.Metadata.TryGetValue("format", out var format) || format != FormatName)
            throw new CMoEFormatException($"'{path}' is not a CMoE activation profile (metadata format '{format}'). Profile the model again.");
        if (!file.Metadata.TryGetValue("version", out var version) || version != "1")
            throw new CMoEFormatException($"'{path}' is a CMoE profile of version {version}; this library reads version 1. Upgrade CMoE.MLNet.");
        var score = Enum.Parse<ActivationScore>(file.Metadata.GetValueOrDefault("score", nameof(ActivationScore.Cosine)));
        int kAct = int.Parse(file.Metadata.GetValueOrDefault("k_act", "10"), System.Globalization.CultureInfo.InvariantCulture);
        var markers = new List<Tensor>();
        for (int l = 0; file.Contains($"markers.{l}"); l++) markers.Add(file.Load($"markers.{l}"));
        return new ActivationProfile(markers, score, kAct);
    }

    /// <summary>Frees the markers.</summary>
    public void Dispose()
    {
        foreach (var m in _markers) m.Dispose();
    }
}
