using CMoE.MLNet.Data;
using CMoE.MLNet.Persistence;
using CMoE.MLNet.Scoring;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;

namespace CMoE.MLNet;

/// <summary>
/// Base of every CMoE transformer that holds a language model: it appends the scoring columns described in
/// <see cref="ScoringOptions"/> (perplexity, log-likelihood, embedding, label scores) to each row, lazily and in
/// batches, works with <c>PredictionEngine</c>, and saves the model's weights, config and tokenizer into the model
/// zip. Dispose it (or the chain holding it) to free the model.
/// </summary>
public abstract class LanguageModelTransformerBase : RowMapperTransformerBase, IDisposable
{
    private readonly TextScorer _scorer;
    private bool _disposed;

    private protected LanguageModelTransformerBase(IHostEnvironment env, string name, LanguageModelHandle handle, ScoringSettings settings)
        : base(env, name)
    {
        Handle = handle;
        Settings = settings;
        _scorer = new TextScorer(handle, settings);
        MlNetBridge.RegisterAll(env);
    }

    /// <summary>The model and tokenizer (owned).</summary>
    internal LanguageModelHandle Handle { get; }

    /// <summary>The scoring settings.</summary>
    internal ScoringSettings Settings { get; }

    /// <summary>The MoE layout of the model (e.g. "S2A2E16"), or null when it is dense.</summary>
    public string? Layout => Handle.IsCarved ? Handle.Layout ?? "" : null;

    /// <summary>Whether every FFN of the model is a carved MoE block.</summary>
    public bool IsCarved => Handle.IsCarved;

    /// <summary>The format the model's weights are held in (see <see cref="ScoringOptions.Weights"/>).</summary>
    public Modeling.Weights.WeightFormat Weights => Handle.Weights;

    /// <summary>Length of the embedding column's vectors.</summary>
    public int EmbeddingSize => _scorer.EmbeddingSize;

    /// <summary>The input text column.</summary>
    public string TextColumnName => Settings.TextColumn;

    private protected override IReadOnlyList<InputColumn> InputColumns => [new InputColumn(Settings.TextColumn, TextDataViewType.Instance)];

    private protected override IReadOnlyList<(string Name, DataViewType Type)> OutputColumns => OutputColumnsOf(Settings, EmbeddingSize);

    private protected override int BatchSize => Settings.BatchSize;

    /// <summary>The format this type saves (its ML.NET loader signature).</summary>
    private protected abstract ModelFormat SaveFormat { get; }

    internal static IReadOnlyList<(string Name, DataViewType Type)> OutputColumnsOf(ScoringSettings s, int embeddingSize)
    {
        var columns = new List<(string, DataViewType)>();
        if (s.PerplexityColumn is not null) columns.Add((s.PerplexityColumn, NumberDataViewType.Single));
        if (s.LogLikelihoodColumn is not null) columns.Add((s.LogLikelihoodColumn, NumberDataViewType.Single));
        if (s.EmbeddingColumn is not null) columns.Add((s.EmbeddingColumn, new VectorDataViewType(NumberDataViewType.Single, embeddingSize)));
        if (s.Labels.Length > 0) columns.Add((s.LabelScoresColumn, new VectorDataViewType(NumberDataViewType.Single, s.Labels.Length)));
        return columns;
    }

    private protected override void MapBatch(IReadOnlyList<object[]> inputs, object[][] outputs)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var scores = _scorer.Score(inputs.Select(r => (string)r[0]).ToList());
        for (int r = 0; r < scores.Length; r++)
        {
            int o = 0;
            var s = scores[r];
            if (Settings.PerplexityColumn is not null) outputs[r][o++] = s.Perplexity;
            if (Settings.LogLikelihoodColumn is not null) outputs[r][o++] = s.LogLikelihood;
            if (Settings.EmbeddingColumn is not null) outputs[r][o++] = s.Embedding;
            if (Settings.Labels.Length > 0) outputs[r][o++] = s.LabelScores;
        }
    }

    // Header written by every CMoE language-model transformer, in this order (readers: ReadModel):
    //   ScoringSettings (see ScoringSettings.Write), then the model file list (LanguageModelHandle.AddTo), then
    //   what WriteExtra adds. Entries: "lm-<file>" per model file, plus those of WriteExtra.
    private protected sealed override ModelPayload CreatePayload()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var payload = new ModelPayload(SaveFormat);
        Settings.Write(payload.Header);
        Handle.AddTo(payload);
        WriteExtra(payload);
        return payload;
    }

    /// <summary>Adds a derived transformer's own header fields and entries after the common ones.</summary>
    private protected virtual void WriteExtra(ModelPayload payload) { }

    /// <summary>Reads the common part of the header (settings, model) written by <see cref="CreatePayload"/>.</summary>
    private protected static (LanguageModelHandle Handle, ScoringSettings Settings) ReadModel(ModelPayloadReader payload, bool requireOutput = true)
    {
        var settings = ScoringSettings.Read(payload.Header, requireOutput);
        return (LanguageModelHandle.Load(payload), settings);
    }

    /// <summary>The nearest upstream CMoE language-model transformer of type <typeparamref name="T"/> that produced <paramref name="data"/>.</summary>
    internal static T? Upstream<T>(IDataView data) where T : LanguageModelTransformerBase => FindProducer<T>(data);

    /// <summary>Frees what a derived transformer owns besides the model.</summary>
    private protected virtual void OnDispose() { }

    /// <summary>Frees the model and its temporary files.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        OnDispose();
        Handle.Dispose();
        GC.SuppressFinalize(this);
    }
}

/// <summary>
/// Base of the CMoE estimators: schema propagation (checks the text column, adds the scoring columns) and the
/// checked options. Fit reads the text column as calibration data where the estimator learns from data.
/// </summary>
/// <typeparam name="TTransformer">The transformer Fit returns.</typeparam>
public abstract class LanguageModelEstimatorBase<TTransformer> : IEstimator<TTransformer>
    where TTransformer : LanguageModelTransformerBase
{
    private protected LanguageModelEstimatorBase(IHostEnvironment env, string name, ScoringOptions options)
    {
        ArgumentNullException.ThrowIfNull(env);
        ArgumentNullException.ThrowIfNull(options);
        Persistence.MlNetVersionGuard.EnsureSupported();
        Env = env;
        Name = name;
        Settings = ScoringSettings.From(options);
        Weights = options.Weights;
    }

    /// <summary>The weight format the fitted model is held in (null: as loaded; see <see cref="ScoringOptions.Weights"/>).</summary>
    private protected Modeling.Weights.WeightFormat? Weights { get; }

    /// <summary>The environment the transformer will be created in.</summary>
    private protected IHostEnvironment Env { get; }

    /// <summary>Names the estimator in messages.</summary>
    private protected string Name { get; }

    /// <summary>The checked scoring settings.</summary>
    private protected ScoringSettings Settings { get; }

    /// <summary>The nearest upstream CMoE transformer of type <typeparamref name="T"/> that produced <paramref name="data"/>.</summary>
    private protected static T? Upstream<T>(IDataView data) where T : LanguageModelTransformerBase => LanguageModelTransformerBase.Upstream<T>(data);

    /// <summary>Throws naming the text column when <paramref name="input"/> lacks it or it is not text.</summary>
    private protected void CheckInput(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        new InputColumn(Settings.TextColumn, TextDataViewType.Instance).Find(input.Schema, Name);
    }

    /// <summary>Fits the estimator on <paramref name="input"/> (its text column).</summary>
    /// <param name="input">The data.</param>
    public abstract TTransformer Fit(IDataView input);

    /// <summary>The input shape plus the scoring columns; throws naming a missing or non-text input column.</summary>
    /// <param name="inputSchema">The shape of the data Fit and Transform will see.</param>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        var found = inputSchema.Where(c => c.Name == Settings.TextColumn).ToList();
        if (found.Count == 0)
            throw new ArgumentOutOfRangeException(nameof(inputSchema),
                $"{Name}: input column '{Settings.TextColumn}' not found; it must be of type String (text). Input columns: " +
                $"{string.Join(", ", inputSchema.Select(c => c.Name))}.");
        var column = found[^1];
        if (column.Kind != SchemaShape.Column.VectorKind.Scalar || column.ItemType is not TextDataViewType)
            throw new ArgumentOutOfRangeException(nameof(inputSchema),
                $"{Name}: input column '{Settings.TextColumn}' has type {(column.Kind == SchemaShape.Column.VectorKind.Scalar ? "" : "vector of ")}{column.ItemType}, " +
                "expected String (text). Convert or concatenate it into one text column first (e.g. mlContext.Transforms.Text or CustomMapping).");
        // A SchemaShape records only that the embedding is a fixed-size vector, not its size (the model's hidden
        // size, unknown here when the model comes from an upstream stage): any positive size gives the same shape.
        var outputs = LanguageModelTransformerBase.OutputColumnsOf(Settings, embeddingSize: 1);
        var builder = new DataViewSchema.Builder();
        foreach (var (name, type) in outputs) builder.AddColumn(name, type);
        var added = MlNetBridge.ShapeOf(builder.ToSchema());
        var names = outputs.Select(o => o.Name).ToHashSet();
        return new SchemaShape(inputSchema.Where(c => !names.Contains(c.Name)).Concat(added));
    }
}
