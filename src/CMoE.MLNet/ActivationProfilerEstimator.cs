using CMoE.Carving;
using CMoE.MLNet.Persistence;
using CMoE.MLNet.Scoring;
using Microsoft.ML;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace CMoE.MLNet;

/// <summary>
/// Step 1 of CMoE (method section 1), one pass: runs the calibration text of the input's text column through a dense
/// model and records, for every FFN layer, which neurons are among the K_a most active per token. The returned
/// <see cref="ActivationProfilerTransformer"/> holds the dense model and the profile and scores rows with the dense
/// model; chain <see cref="MoECarverEstimator"/> after it to carve from the profile. Created by
/// <c>mlContext.Transforms.ProfileActivations(...)</c>.
/// </summary>
public sealed class ActivationProfilerEstimator : LanguageModelEstimatorBase<ActivationProfilerTransformer>
{
    private readonly Options _options;

    /// <summary>Options of <see cref="ActivationProfilerEstimator"/>.</summary>
    public sealed class Options : CalibrationOptions
    {
        /// <summary>The dense Hugging Face LLaMA model folder to profile (required).</summary>
        public string ModelFolder { get; set; } = "";

        /// <summary>The activation score: the authors' cosine form (default) or the raw SwiGLU activation.</summary>
        public ActivationScore Score { get; set; } = ActivationScore.Cosine;

        /// <summary>K_a: markers per token (default 10).</summary>
        public int KAct { get; set; } = ActivationMarkers.DefaultMarkersPerToken;

        /// <summary>Calibration windows per forward pass (bounds memory). Default 8.</summary>
        public int ForwardBatch { get; set; } = 8;
    }

    internal ActivationProfilerEstimator(IHostEnvironment env, Options options)
        : base(env, nameof(ActivationProfilerEstimator), options)
    {
        options.ValidateCalibration();
        if (string.IsNullOrWhiteSpace(options.ModelFolder))
            throw new ArgumentException("ModelFolder must name the dense model folder to profile.", nameof(options));
        if (options.KAct < 1) throw new ArgumentException($"KAct must be at least 1; got {options.KAct}.", nameof(options));
        if (options.ForwardBatch < 1) throw new ArgumentException($"ForwardBatch must be at least 1; got {options.ForwardBatch}.", nameof(options));
        _options = options;
    }

    /// <summary>Loads the dense model, samples calibration windows from the text column and profiles every layer.</summary>
    /// <param name="input">Calibration data (its text column).</param>
    public override ActivationProfilerTransformer Fit(IDataView input)
    {
        CheckInput(input);
        var handle = LanguageModelHandle.FromFolder(_options.ModelFolder, Modeling.Weights.WeightFormat.Fp32);
        try
        {
            if (handle.IsCarved)
                throw new ArgumentException($"{Name}: '{_options.ModelFolder}' holds a carved model; profile the dense model it came from.");
            var windows = CalibrationData.Windows(input, handle.Tokenizer, _options, Name);
            using var ids = tensor(windows);                                                // [samples, length]
            var progress = _options.Progress is { } p ? new Progress<(int Done, int Total)>(x => p.Report(new CMoEProgress("profile", x.Done, x.Total))) : null;
            var profile = ActivationProfiler.Profile(handle.Model, ids, _options.Score, _options.KAct, _options.ForwardBatch,
                progress, _options.Cancellation);
            handle.UseWeights(Weights);
            return new ActivationProfilerTransformer(Env, handle, Settings, profile);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }
}

/// <summary>
/// The dense model plus its <see cref="ActivationProfile"/> (per-layer activation markers on the calibration data).
/// Scores rows with the dense model. Saved with both in the model zip.
/// </summary>
public sealed class ActivationProfilerTransformer : LanguageModelTransformerBase, ILoadableTransformer<ActivationProfilerTransformer>
{
    private const string ProfileEntry = "profile.safetensors";
    private static readonly ModelFormat FormatInfo = new("CMoEActivationProfiler", "CMOEAPTR", Version: 1);

    internal ActivationProfilerTransformer(IHostEnvironment env, LanguageModelHandle handle, ScoringSettings settings, ActivationProfile profile)
        : base(env, nameof(ActivationProfilerTransformer), handle, settings)
    {
        Profile = profile;
    }

    /// <summary>The activation profile (owned by the transformer; do not dispose it).</summary>
    public ActivationProfile Profile { get; }

    static ModelFormat ILoadableTransformer<ActivationProfilerTransformer>.Format => FormatInfo;

    private protected override void OnDispose() => Profile.Dispose();

    private protected override ModelFormat SaveFormat => FormatInfo;

    // Extra entry "profile.safetensors": ActivationProfile.Save's file (U8 markers per layer + metadata).
    private protected override void WriteExtra(ModelPayload payload) => payload.Add(ProfileEntry, stream =>
    {
        string tmp = Path.Combine(Path.GetTempPath(), $"cmoe-profile-{Guid.NewGuid():N}.safetensors");
        try
        {
            Profile.Save(tmp);
            using var file = File.OpenRead(tmp);
            file.CopyTo(stream, 1 << 20);
        }
        finally
        {
            File.Delete(tmp);
        }
    });

    static ActivationProfilerTransformer ILoadableTransformer<ActivationProfilerTransformer>.Load(IHostEnvironment env, ModelPayloadReader payload)
    {
        var (handle, settings) = ReadModel(payload);
        string tmp = Path.Combine(Path.GetTempPath(), $"cmoe-profile-{Guid.NewGuid():N}.safetensors");
        try
        {
            payload.ExtractTo(ProfileEntry, tmp);
            return new ActivationProfilerTransformer(env, handle, settings, ActivationProfile.Load(tmp));
        }
        catch
        {
            handle.Dispose();
            throw;
        }
        finally
        {
            File.Delete(tmp);
        }
    }
}
