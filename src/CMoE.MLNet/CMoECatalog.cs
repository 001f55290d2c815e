using System.IO.Compression;
using System.Reflection;
using System.Runtime.ExceptionServices;
using CMoE.MLNet.Data;
using CMoE.MLNet.Persistence;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace CMoE.MLNet;

/// <summary>
/// The public entry points of CMoE.MLNet on <see cref="MLContext"/>.
/// </summary>
public static class CMoECatalog
{
    // ------------------------------------------------------------------ transforms

    /// <summary>
    /// Carves a dense LLaMA model into a Mixture-of-Experts (CMoE) on calibration text and returns an estimator whose
    /// transformer scores rows with the carved model (Perplexity, LogLikelihood, Embedding columns; see
    /// <see cref="ScoringOptions"/>). Carving is sequential (the paper's procedure): layer l is profiled on the outputs
    /// of the already-carved layers. The calibration text is the <paramref name="textColumnName"/> column of the data
    /// given to Fit: rows encoded with BOS, concatenated, and <paramref name="calibrationSamples"/> random windows of
    /// <paramref name="calibrationLength"/> tokens drawn from it.
    /// </summary>
    /// <param name="catalog">mlContext.Transforms.</param>
    /// <param name="modelFolder">The dense Hugging Face LLaMA folder (config.json, *.safetensors, tokenizer).</param>
    /// <param name="textColumnName">The text column (calibration at Fit, scored at Transform).</param>
    /// <param name="layout">The MoE layout S{shared}A{active}E{experts}, e.g. "S2A2E16" (25% of FFN neurons active).</param>
    /// <param name="calibrationSamples">Calibration windows.</param>
    /// <param name="calibrationLength">Tokens per calibration window.</param>
    /// <param name="maxTokens">Tokens kept per scored row (BOS included).</param>
    /// <returns>The estimator.</returns>
    public static CarveMoEEstimator CarveMoE(this TransformsCatalog catalog, string modelFolder, string textColumnName = "Text",
        string layout = "S2A2E16", int calibrationSamples = 8, int calibrationLength = 512, int maxTokens = 512) =>
        catalog.CarveMoE(new CarveMoEEstimator.Options
        {
            ModelFolder = modelFolder, TextColumnName = textColumnName, Layout = layout, CalibrationSamples = calibrationSamples,
            CalibrationLength = calibrationLength, MaxTokens = maxTokens,
        });

    /// <summary>Carves a dense model into a CMoE model with every knob in <paramref name="options"/> (see the flat overload).</summary>
    /// <param name="catalog">mlContext.Transforms.</param>
    /// <param name="options">Model folder, layout, calibration, router balancing, scoring columns.</param>
    /// <returns>The estimator.</returns>
    public static CarveMoEEstimator CarveMoE(this TransformsCatalog catalog, CarveMoEEstimator.Options options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new CarveMoEEstimator(Env(catalog), options);
    }

    /// <summary>
    /// Scores rows with an existing model folder, dense or carved (Perplexity, LogLikelihood, Embedding columns; see
    /// <see cref="ScoringOptions"/>). Fit learns nothing; the transformer saves the model into the model zip.
    /// </summary>
    /// <param name="catalog">mlContext.Transforms.</param>
    /// <param name="modelFolder">A dense Hugging Face LLaMA folder or a carved folder.</param>
    /// <param name="textColumnName">The text column.</param>
    /// <param name="maxTokens">Tokens kept per row (BOS included).</param>
    /// <returns>The estimator.</returns>
    public static LanguageModelScoringEstimator ScoreWithLanguageModel(this TransformsCatalog catalog, string modelFolder,
        string textColumnName = "Text", int maxTokens = 512) =>
        catalog.ScoreWithLanguageModel(new LanguageModelScoringEstimator.Options { ModelFolder = modelFolder, TextColumnName = textColumnName, MaxTokens = maxTokens });

    /// <summary>Scores rows with an existing model folder, with every knob in <paramref name="options"/>.</summary>
    /// <param name="catalog">mlContext.Transforms.</param>
    /// <param name="options">Model folder and scoring columns.</param>
    /// <returns>The estimator.</returns>
    public static LanguageModelScoringEstimator ScoreWithLanguageModel(this TransformsCatalog catalog, LanguageModelScoringEstimator.Options options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new LanguageModelScoringEstimator(Env(catalog), options);
    }

    /// <summary>
    /// CMoE step 1 alone: profiles the FFN activations of a dense model on the text column's calibration windows
    /// (one pass). Its transformer holds the dense model and the profile and scores rows with the dense model; chain
    /// <see cref="CarveExperts(TransformsCatalog, string, string)"/> after it.
    /// </summary>
    /// <param name="catalog">mlContext.Transforms.</param>
    /// <param name="modelFolder">The dense Hugging Face LLaMA folder.</param>
    /// <param name="textColumnName">The text column.</param>
    /// <param name="calibrationSamples">Calibration windows.</param>
    /// <param name="calibrationLength">Tokens per calibration window.</param>
    /// <returns>The estimator.</returns>
    public static ActivationProfilerEstimator ProfileActivations(this TransformsCatalog catalog, string modelFolder, string textColumnName = "Text",
        int calibrationSamples = 8, int calibrationLength = 512) =>
        catalog.ProfileActivations(new ActivationProfilerEstimator.Options
        {
            ModelFolder = modelFolder, TextColumnName = textColumnName, CalibrationSamples = calibrationSamples, CalibrationLength = calibrationLength,
        });

    /// <summary>CMoE step 1 alone, with every knob in <paramref name="options"/>.</summary>
    /// <param name="catalog">mlContext.Transforms.</param>
    /// <param name="options">Model folder, score, K_a, calibration, scoring columns.</param>
    /// <returns>The estimator.</returns>
    public static ActivationProfilerEstimator ProfileActivations(this TransformsCatalog catalog, ActivationProfilerEstimator.Options options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new ActivationProfilerEstimator(Env(catalog), options);
    }

    /// <summary>
    /// CMoE steps 2-4 alone: carves the dense model of the upstream <see cref="ActivationProfilerTransformer"/> (chain
    /// it after <see cref="ProfileActivations(TransformsCatalog, string, string, int, int)"/>) into the given layout.
    /// </summary>
    /// <param name="catalog">mlContext.Transforms.</param>
    /// <param name="layout">The MoE layout, e.g. "S2A2E16".</param>
    /// <param name="textColumnName">The text column.</param>
    /// <returns>The estimator.</returns>
    public static MoECarverEstimator CarveExperts(this TransformsCatalog catalog, string layout = "S2A2E16", string textColumnName = "Text") =>
        catalog.CarveExperts(new MoECarverEstimator.Options { Layout = layout, TextColumnName = textColumnName });

    /// <summary>
    /// CMoE steps 2-4 with every knob in <paramref name="options"/>: from <paramref name="profile"/> or the upstream
    /// profiler, or sequentially from <see cref="MoECarverEstimator.Options.ModelFolder"/>.
    /// </summary>
    /// <param name="catalog">mlContext.Transforms.</param>
    /// <param name="options">Layout, k-means rounds, sequential-mode model folder, scoring columns.</param>
    /// <param name="profile">A fitted profiler to carve from instead of the upstream one; null to use the chain.</param>
    /// <returns>The estimator.</returns>
    public static MoECarverEstimator CarveExperts(this TransformsCatalog catalog, MoECarverEstimator.Options options, ActivationProfilerTransformer? profile = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new MoECarverEstimator(Env(catalog), options, profile);
    }

    /// <summary>
    /// The training-free router of the upstream carved model, with optional bias balancing on the text column's
    /// calibration windows (<paramref name="balanceIterations"/> rounds; 0 keeps the carved router).
    /// </summary>
    /// <param name="catalog">mlContext.Transforms.</param>
    /// <param name="balanceIterations">Bias balancing rounds.</param>
    /// <param name="textColumnName">The text column.</param>
    /// <param name="calibrationSamples">Calibration windows.</param>
    /// <param name="calibrationLength">Tokens per calibration window.</param>
    /// <returns>The estimator.</returns>
    public static RouterFitEstimator FitRouter(this TransformsCatalog catalog, int balanceIterations = 0, string textColumnName = "Text",
        int calibrationSamples = 8, int calibrationLength = 512) =>
        catalog.FitRouter(new RouterFitEstimator.Options
        {
            BalanceIterations = balanceIterations, TextColumnName = textColumnName, CalibrationSamples = calibrationSamples, CalibrationLength = calibrationLength,
        });

    /// <summary>The router stage with every knob in <paramref name="options"/>.</summary>
    /// <param name="catalog">mlContext.Transforms.</param>
    /// <param name="options">Balancing rounds, bias step, calibration, scoring columns.</param>
    /// <param name="carved">A fitted carved transformer to start from instead of the upstream one; null to use the chain.</param>
    /// <returns>The estimator.</returns>
    public static RouterFitEstimator FitRouter(this TransformsCatalog catalog, RouterFitEstimator.Options options, LanguageModelTransformerBase? carved = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new RouterFitEstimator(Env(catalog), options, carved);
    }

    /// <summary>
    /// Recovery fine-tuning (LoRA, router scale, bias balancing; merged at the end) of the upstream carved model
    /// on windows sampled from the text column.
    /// </summary>
    /// <param name="catalog">mlContext.Transforms.</param>
    /// <param name="textColumnName">The text column.</param>
    /// <param name="epochs">Passes over the training windows.</param>
    /// <returns>The estimator.</returns>
    public static MoEFineTuner FineTuneMoE(this TransformsCatalog catalog, string textColumnName = "Text", int epochs = 1) =>
        catalog.FineTuneMoE(new MoEFineTuner.Options { TextColumnName = textColumnName, Epochs = epochs });

    /// <summary>Recovery fine-tuning with every knob in <paramref name="options"/> (not available in this build).</summary>
    /// <param name="catalog">mlContext.Transforms.</param>
    /// <param name="options">Training recipe, windows, scoring columns.</param>
    /// <param name="carved">A fitted carved transformer to start from instead of the upstream one; null to use the chain.</param>
    /// <returns>The estimator.</returns>
    public static MoEFineTuner FineTuneMoE(this TransformsCatalog catalog, MoEFineTuner.Options options, LanguageModelTransformerBase? carved = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new MoEFineTuner(Env(catalog), options, carved);
    }

    // ------------------------------------------------------------------ trainers

    /// <summary>
    /// Fine-tunes a dense or carved LLaMA-family model into a binary text classifier (Boolean label; outputs Score, Probability,
    /// PredictedLabel; see <see cref="LanguageModelClassifierTrainer"/>). With <paramref name="modelFolder"/> null, the model of
    /// the upstream CMoE stage (e.g. <c>CarveMoE</c>) is fine-tuned.
    /// </summary>
    /// <param name="catalog">mlContext.BinaryClassification.Trainers.</param>
    /// <param name="modelFolder">A dense Hugging Face LLaMA folder or a carved folder; null: the upstream stage's model.</param>
    /// <param name="labelColumnName">The Boolean label column.</param>
    /// <param name="textColumnName">The text column.</param>
    /// <param name="maxTokens">Tokens per row (BOS included).</param>
    /// <param name="epochs">Passes over the training rows.</param>
    /// <returns>The trainer.</returns>
    public static LanguageModelClassifierTrainer LanguageModelClassifier(this BinaryClassificationCatalog.BinaryClassificationTrainers catalog,
        string? modelFolder = null, string labelColumnName = "Label", string textColumnName = "Text", int maxTokens = 64, int epochs = 1) =>
        catalog.LanguageModelClassifier(new LanguageModelClassifierTrainer.Options
        {
            ModelFolder = modelFolder, LabelColumnName = labelColumnName, TextColumnName = textColumnName, MaxTokens = maxTokens, Epochs = epochs,
        });

    /// <summary>The binary language-model classifier with every knob in <paramref name="options"/> (see the flat overload).</summary>
    /// <param name="catalog">mlContext.BinaryClassification.Trainers.</param>
    /// <param name="options">Model, columns, fine-tuning knobs.</param>
    /// <returns>The trainer.</returns>
    public static LanguageModelClassifierTrainer LanguageModelClassifier(this BinaryClassificationCatalog.BinaryClassificationTrainers catalog,
        LanguageModelClassifierTrainer.Options options)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(options);
        return new LanguageModelClassifierTrainer(MlNetBridge.Environment(catalog), options, ClassifierTask.Binary);
    }

    /// <summary>
    /// Fine-tunes a dense or carved LLaMA-family model into a multiclass text classifier (key-typed label from
    /// <c>MapValueToKey</c>, as <c>TextClassification</c> expects; outputs PredictedLabel and Score, the class probabilities).
    /// </summary>
    /// <param name="catalog">mlContext.MulticlassClassification.Trainers.</param>
    /// <param name="modelFolder">A dense Hugging Face LLaMA folder or a carved folder; null: the upstream stage's model.</param>
    /// <param name="labelColumnName">The key-typed label column.</param>
    /// <param name="textColumnName">The text column.</param>
    /// <param name="maxTokens">Tokens per row (BOS included).</param>
    /// <param name="epochs">Passes over the training rows.</param>
    /// <returns>The trainer.</returns>
    public static LanguageModelClassifierTrainer LanguageModelClassifier(this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        string? modelFolder = null, string labelColumnName = "Label", string textColumnName = "Text", int maxTokens = 64, int epochs = 1) =>
        catalog.LanguageModelClassifier(new LanguageModelClassifierTrainer.Options
        {
            ModelFolder = modelFolder, LabelColumnName = labelColumnName, TextColumnName = textColumnName, MaxTokens = maxTokens, Epochs = epochs,
        });

    /// <summary>The multiclass language-model classifier with every knob in <paramref name="options"/> (see the flat overload).</summary>
    /// <param name="catalog">mlContext.MulticlassClassification.Trainers.</param>
    /// <param name="options">Model, columns, fine-tuning knobs.</param>
    /// <returns>The trainer.</returns>
    public static LanguageModelClassifierTrainer LanguageModelClassifier(this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        LanguageModelClassifierTrainer.Options options)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(options);
        return new LanguageModelClassifierTrainer(MlNetBridge.Environment(catalog), options, ClassifierTask.Multiclass);
    }

    private static Microsoft.ML.Runtime.IHostEnvironment Env(TransformsCatalog catalog)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        return MlNetBridge.Environment(catalog);
    }

    // ------------------------------------------------------------------ persistence

    /// <summary>
    /// Lets <c>mlContext.Model.Load</c> rebuild CMoE transformers in this <see cref="MLContext"/>. Call it once per
    /// MLContext before loading a model zip that contains CMoE transformers in a context that has not itself created
    /// one (typically: a fresh process that only loads). It is idempotent and thread-safe.
    /// </summary>
    /// <remarks>
    /// ML.NET looks up loaders in the MLContext's own component catalog, and the registration mark it scans
    /// assemblies for is internal to ML.NET, so referencing CMoE.MLNet is not enough (as with ML.NET's
    /// <c>CustomMapping</c>, which needs <c>ComponentCatalog.RegisterAssembly</c>). Without this call
    /// <c>Model.Load</c> fails with ML.NET's "Couldn't load model". <see cref="LoadCMoEModel"/> calls it for you.
    /// </remarks>
    /// <param name="mlContext">The context that will load the model.</param>
    /// <returns>The same context, for chaining.</returns>
    public static MLContext RegisterCMoE(this MLContext mlContext)
    {
        ArgumentNullException.ThrowIfNull(mlContext);
        MlNetBridge.RegisterAll(mlContext);
        return mlContext;
    }

    /// <summary>
    /// Loads a model zip written by <c>mlContext.Model.Save</c> that contains CMoE transformers: registers them
    /// (<see cref="RegisterCMoE"/>), loads, and turns every failure into a <see cref="CMoEFormatException"/> whose
    /// message names the file and the fix (not a model zip, no CMoE transformer inside, written by a newer CMoE
    /// format version, corrupt).
    /// </summary>
    /// <param name="mlContext">The context to load into.</param>
    /// <param name="path">The model zip.</param>
    /// <param name="inputSchema">The input schema saved with the model (null if none was saved).</param>
    /// <returns>The loaded transformer (chain).</returns>
    /// <exception cref="FileNotFoundException">No file at <paramref name="path"/>.</exception>
    /// <exception cref="CMoEFormatException">The file is not a model zip with CMoE transformers that this build reads.</exception>
    public static ITransformer LoadCMoEModel(this MLContext mlContext, string path, out DataViewSchema? inputSchema)
    {
        ArgumentNullException.ThrowIfNull(mlContext);
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"Model zip '{path}' not found.", path);
        mlContext.RegisterCMoE();

        ITransformer model;
        try
        {
            model = mlContext.Model.Load(path, out inputSchema);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            for (var inner = e; inner is not null; inner = inner.InnerException)
                if (inner is CMoEFormatException ours)
                    ExceptionDispatchInfo.Capture(ours).Throw();
            throw new CMoEFormatException(IsZip(path)
                ? $"'{path}' is a zip but not an ML.NET model zip that this build can read ({Innermost(e).Message}). Save the model with mlContext.Model.Save(...)."
                : $"'{path}' is not a model zip (not a zip archive). Pass the file written by mlContext.Model.Save(...).", e);
        }
        if (!ContainsCMoE(model))
        {
            (model as IDisposable)?.Dispose();
            throw new CMoEFormatException($"'{path}' is an ML.NET model zip but holds no CMoE transformer; it was not saved from a CMoE pipeline. Load it with mlContext.Model.Load instead.");
        }
        return model;
    }

    private static bool ContainsCMoE(ITransformer model) => model switch
    {
        RowMapperTransformerBase => true,
        IEnumerable<ITransformer> chain => chain.Any(ContainsCMoE),
        _ => false,
    };

    private static Exception Innermost(Exception e)
    {
        while (e.InnerException is not null && e is TargetInvocationException or AggregateException) e = e.InnerException;
        return e;
    }

    private static bool IsZip(string path)
    {
        try
        {
            using var zip = ZipFile.OpenRead(path);
            return true;
        }
        catch (InvalidDataException)
        {
            return false;
        }
    }
}
