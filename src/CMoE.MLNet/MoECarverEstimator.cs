using System.Text.Json.Nodes;
using CMoE.Carving;
using CMoE.MLNet.Persistence;
using CMoE.MLNet.Scoring;
using Microsoft.ML;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace CMoE.MLNet;

/// <summary>
/// Steps 2-4 of CMoE (method sections 2-4): carves every dense FFN into shared and routed experts (balanced
/// clustering of the activation markers) with a training-free router. Two modes:
/// <list type="bullet">
/// <item>From a profile: chained after <see cref="ActivationProfilerEstimator"/> (or given its transformer), it carves a
/// copy of that dense model from the one-pass profile; no calibration forward pass is needed.</item>
/// <item>Sequential (the paper's procedure, better quality): with <see cref="Options.ModelFolder"/> set and no
/// upstream profile, it samples calibration windows from the input's text column and profiles layer l on the
/// outputs of the already carved layers 0..l-1.</item>
/// </list>
/// Created by <c>mlContext.Transforms.CarveExperts(...)</c>.
/// </summary>
/// <remarks>Do not put a cache checkpoint between this estimator and the profiler: the profile is found through the
/// data view the profiler's transformer produced.</remarks>
public sealed class MoECarverEstimator : LanguageModelEstimatorBase<MoECarverTransformer>
{
    private readonly Options _options;
    private readonly MoeLayout _layout;
    private readonly ActivationProfilerTransformer? _profile;

    /// <summary>Options of <see cref="MoECarverEstimator"/>.</summary>
    public sealed class Options : CalibrationOptions
    {
        /// <summary>The MoE layout S{shared}A{active}E{experts}. Default "S2A2E16" (25% of FFN neurons active).</summary>
        public string Layout { get; set; } = "S2A2E16";

        /// <summary>Balanced k-means rounds (1 = the authors' code). Default 1.</summary>
        public int Iterations { get; set; } = 1;

        /// <summary>Sequential mode only: the dense model folder. Leave empty to carve from an upstream profile.</summary>
        public string? ModelFolder { get; set; }

        /// <summary>Sequential mode only: K_a, markers per token (default 40; the authors': 10).</summary>
        public int KAct { get; set; } = CarveOptions.DefaultKAct;

        /// <summary>Sequential mode only: the activation score (default raw; the authors': cosine).</summary>
        public ActivationScore Score { get; set; } = ActivationScore.Raw;

        /// <summary>Sequential mode only: calibration windows per forward pass. Default 8.</summary>
        public int ForwardBatch { get; set; } = 8;

        /// <summary>Sequential mode only: router selection, the authors' top-a (default) or a calibrated threshold (dynamic-K, a variable count per token with mean a on the calibration tokens).</summary>
        public RouterSelection Routing { get; set; } = RouterSelection.TopK;

        /// <summary>Sequential mode only: router vectors, the mean of the expert's rows (default) or the representative neuron's rows (authors).</summary>
        public RouterVectors RouterVectors { get; set; } = RouterVectors.Mean;

        /// <summary>Sequential mode only: neuron score weighting before the markers, by ||W_down[:, i]|| (default) or none (authors).</summary>
        public NeuronWeighting NeuronWeighting { get; set; } = NeuronWeighting.DownNorm;

        /// <summary>Down-projection refit after carving each layer, ridge (default: closed-form fit of the experts' W_down columns to the dense FFN output on the calibration tokens) or none (authors).</summary>
        public DownProjectionFit DownFit { get; set; } = DownProjectionFit.Ridge;

        /// <summary>Relative ridge strength of <see cref="DownProjectionFit.Ridge"/>. Default 0.3.</summary>
        public double DownFitRidge { get; set; } = CarveOptions.DefaultDownFitRidge;
    }

    internal MoECarverEstimator(IHostEnvironment env, Options options, ActivationProfilerTransformer? profile = null)
        : base(env, nameof(MoECarverEstimator), options)
    {
        _layout = MoeLayout.Parse(options.Layout);
        if (options.Iterations < 1) throw new ArgumentException($"Iterations must be at least 1; got {options.Iterations}.", nameof(options));
        options.ValidateCalibration();
        _options = options;
        _profile = profile;
    }

    /// <summary>Carves from the upstream (or given) profile, or sequentially from <see cref="Options.ModelFolder"/>.</summary>
    /// <param name="input">The data; its text column is the calibration text in sequential mode.</param>
    public override MoECarverTransformer Fit(IDataView input)
    {
        CheckInput(input);
        var profiled = _profile ?? Upstream<ActivationProfilerTransformer>(input);
        LanguageModelHandle handle;
        CarveReport report;
        if (profiled is not null)
        {
            if (_options.Routing != RouterSelection.TopK)
                throw new InvalidOperationException($"{Name}: Routing = Threshold applies to sequential carving (Options.ModelFolder, no upstream profile); carving from a one-pass profile routes top-a.");
            profiled.Handle.RequireFp32(Name);
            handle = profiled.Handle.Clone();
            try
            {
                report = MoeCarver.CarveFromProfile(handle.Model, profiled.Profile, _layout, _options.Iterations,
                    Progress(_options, "carve"), _options.Cancellation);
                handle.Provenance = new JsonObject { ["method"] = "one-pass profile", ["layout"] = _layout.ToString(), ["k_act"] = profiled.Profile.KAct,
                    ["score"] = profiled.Profile.Score.ToString(), ["calibration_tokens"] = profiled.Profile.Tokens, ["iterations"] = _options.Iterations };
                handle.MarkChanged(_layout.ToString());
            }
            catch
            {
                handle.Dispose();
                throw;
            }
        }
        else if (!string.IsNullOrWhiteSpace(_options.ModelFolder))
        {
            handle = LanguageModelHandle.FromFolder(_options.ModelFolder, Modeling.Weights.WeightFormat.Fp32);
            try
            {
                report = CarveSequential(handle, input, _options, _layout, Name);
            }
            catch
            {
                handle.Dispose();
                throw;
            }
        }
        else
        {
            throw new InvalidOperationException(
                $"{Name} has no dense model: chain it after mlContext.Transforms.ProfileActivations(...), pass the ActivationProfilerTransformer, " +
                "or set Options.ModelFolder for sequential carving.");
        }
        try
        {
            handle.UseWeights(Weights);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
        return new MoECarverTransformer(Env, handle, Settings, report);
    }

    /// <summary>Sequential carving (MoeCarver.Carve) of the dense <paramref name="handle"/> on calibration windows from <paramref name="input"/>.</summary>
    internal static CarveReport CarveSequential(LanguageModelHandle handle, IDataView input, CalibrationOptions options, MoeLayout layout, string stage,
        int iterations = 1, int kAct = CarveOptions.DefaultKAct, ActivationScore score = ActivationScore.Raw, int forwardBatch = 8)
    {
        var defaults = new CarveOptions { Layout = layout };
        var (routing, vectors, weighting, downFit, ridge) = (defaults.Routing, defaults.RouterVectors, defaults.NeuronWeighting, defaults.DownFit, defaults.DownFitRidge);
        if (options is Options own)
            (iterations, kAct, score, forwardBatch, routing, vectors, weighting, downFit, ridge) =
                (own.Iterations, own.KAct, own.Score, own.ForwardBatch, own.Routing, own.RouterVectors, own.NeuronWeighting, own.DownFit, own.DownFitRidge);
        else if (options is CarveMoEEstimator.Options whole)
            (routing, vectors, weighting, downFit, ridge) = (whole.Routing, whole.RouterVectors, whole.NeuronWeighting, whole.DownFit, whole.DownFitRidge);
        if (handle.IsCarved) throw new ArgumentException($"{stage}: the model is already carved; carve a dense model.");
        var windows = CalibrationData.Windows(input, handle.Tokenizer, options, stage);
        using var ids = tensor(windows);                                                    // [samples, length]
        var carve = new CarveOptions
        {
            Layout = layout, KAct = kAct, Score = score, Iterations = iterations, Batch = forwardBatch,
            Routing = routing, RouterVectors = vectors, NeuronWeighting = weighting, DownFit = downFit, DownFitRidge = ridge,
        };
        var report = MoeCarver.Carve(handle.Model, ids, carve, Progress(options, "carve"), options.Cancellation);
        handle.Provenance = new JsonObject
        {
            ["method"] = "sequential", ["layout"] = layout.ToString(), ["k_act"] = kAct, ["score"] = score.ToString(),
            ["iterations"] = iterations, ["routing"] = routing.ToString(), ["router_vectors"] = vectors.ToString(),
            ["neuron_weighting"] = weighting.ToString(), ["down_fit"] = downFit.ToString(), ["down_fit_ridge"] = ridge, ["calibration_samples"] = options.CalibrationSamples,
            ["calibration_length"] = options.CalibrationLength, ["seed"] = options.Seed, ["seconds"] = Math.Round(report.Seconds, 3),
        };
        handle.MarkChanged(layout.ToString());
        return report;
    }

    internal static IProgress<(int Done, int Total)>? Progress(CalibrationOptions options, string stage) =>
        options.Progress is { } p ? new Progress<(int Done, int Total)>(x => p.Report(new CMoEProgress(stage, x.Done, x.Total))) : null;
}

/// <summary>
/// A carved (MoE) model that scores rows. <see cref="Report"/> holds the carving figures (null after loading).
/// Saved as a carved folder (config with a <c>cmoe</c> section, safetensors, tokenizer) inside the model zip.
/// </summary>
public sealed class MoECarverTransformer : LanguageModelTransformerBase, ILoadableTransformer<MoECarverTransformer>
{
    private static readonly ModelFormat FormatInfo = new("CMoEMoECarver", "CMOECVTR", Version: 1);

    internal MoECarverTransformer(IHostEnvironment env, LanguageModelHandle handle, ScoringSettings settings, CarveReport? report)
        : base(env, nameof(MoECarverTransformer), handle, settings)
    {
        Report = report;
    }

    /// <summary>Per-layer carving figures, or null for a transformer loaded from a zip.</summary>
    public CarveReport? Report { get; }

    static ModelFormat ILoadableTransformer<MoECarverTransformer>.Format => FormatInfo;

    private protected override ModelFormat SaveFormat => FormatInfo;

    static MoECarverTransformer ILoadableTransformer<MoECarverTransformer>.Load(IHostEnvironment env, ModelPayloadReader payload)
    {
        var (handle, settings) = ReadModel(payload);
        return new MoECarverTransformer(env, handle, settings, report: null);
    }
}
