using CMoE.MLNet.Persistence;
using CMoE.MLNet.Scoring;
using Microsoft.ML;
using Microsoft.ML.Runtime;

namespace CMoE.MLNet;

/// <summary>
/// Wraps an existing model folder (dense Hugging Face LLaMA or carved) as a scoring transformer; learns nothing
/// from the data. Created by <c>mlContext.Transforms.ScoreWithLanguageModel(...)</c>.
/// </summary>
public sealed class LanguageModelScoringEstimator : LanguageModelEstimatorBase<LanguageModelTransformer>
{
    private readonly string _modelFolder;

    /// <summary>Options of <see cref="LanguageModelScoringEstimator"/>.</summary>
    public sealed class Options : ScoringOptions
    {
        /// <summary>The model folder: a dense Hugging Face LLaMA folder or a carved folder (required).</summary>
        public string ModelFolder { get; set; } = "";
    }

    internal LanguageModelScoringEstimator(IHostEnvironment env, Options options)
        : base(env, nameof(LanguageModelScoringEstimator), options)
    {
        if (string.IsNullOrWhiteSpace(options.ModelFolder))
            throw new ArgumentException("ModelFolder must name a dense or carved model folder.", nameof(options));
        if (!Directory.Exists(options.ModelFolder))
            throw new DirectoryNotFoundException($"Model folder '{options.ModelFolder}' not found; pass a Hugging Face LLaMA folder or a carved folder.");
        _modelFolder = Path.GetFullPath(options.ModelFolder);
    }

    /// <summary>Loads the model; <paramref name="input"/> is only checked for the text column.</summary>
    /// <param name="input">The data (its schema must hold the text column).</param>
    public override LanguageModelTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        CheckInput(input);
        return new LanguageModelTransformer(Env, LanguageModelHandle.FromFolder(_modelFolder, Weights), Settings);
    }
}

/// <summary>
/// Scores text with a dense or carved language model (columns: see <see cref="ScoringOptions"/>). Returned by
/// <c>ScoreWithLanguageModel(...).Fit</c> and by <c>CarveMoE(...).Fit</c>; saved and loaded with the model zip.
/// </summary>
public sealed class LanguageModelTransformer : LanguageModelTransformerBase, ILoadableTransformer<LanguageModelTransformer>
{
    internal LanguageModelTransformer(IHostEnvironment env, LanguageModelHandle handle, ScoringSettings settings)
        : base(env, nameof(LanguageModelTransformer), handle, settings) { }

    static ModelFormat ILoadableTransformer<LanguageModelTransformer>.Format => FormatInfo;

    private static readonly ModelFormat FormatInfo = new("CMoELanguageModel", "CMOELMTR", Version: 1);

    private protected override ModelFormat SaveFormat => FormatInfo;

    static LanguageModelTransformer ILoadableTransformer<LanguageModelTransformer>.Load(IHostEnvironment env, ModelPayloadReader payload)
    {
        var (handle, settings) = ReadModel(payload);
        return new LanguageModelTransformer(env, handle, settings);
    }
}
