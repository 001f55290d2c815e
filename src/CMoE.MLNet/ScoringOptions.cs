using System.Globalization;
using CMoE.Modeling.Weights;

namespace CMoE.MLNet;

/// <summary>How the final hidden states of a row's tokens are pooled into its embedding.</summary>
public enum EmbeddingPooling
{
    /// <summary>Mean over the row's tokens (BOS excluded): a vector of the model's hidden size.</summary>
    Mean,

    /// <summary>Mean then element-wise max over the row's tokens, concatenated: twice the hidden size.</summary>
    MeanMax,
}

/// <summary>
/// What a CMoE language-model transformer reads and appends to each row. Every estimator's options derive from it.
/// </summary>
/// <remarks>
/// <para>Per row, the text is encoded as one document with BOS in front and cut to its first <see cref="MaxTokens"/>
/// tokens (BOS included). With n such tokens:</para>
/// <list type="bullet">
/// <item><c>LogLikelihood</c> (float): sum over positions 1..n-1 of log p(token | earlier tokens), in nats.</item>
/// <item><c>Perplexity</c> (float): exp(-LogLikelihood / (n - 1)).</item>
/// <item><c>Embedding</c> (vector of float): the final hidden states (after the last RMSNorm) of the text tokens
/// (BOS excluded), pooled by <see cref="Pooling"/>; feed it to any ML.NET trainer.</item>
/// <item><c>LabelScores</c> (vector of float, only when <see cref="LabelTexts"/> is set): for each label text L,
/// log p(L | the row's tokens), the log-likelihood of L's tokens (encoded without BOS) as a continuation, for
/// zero-shot classification (the largest score wins).</item>
/// </list>
/// <para>Empty text (no token after BOS): Perplexity is NaN, LogLikelihood is 0 (an empty sum), Embedding is all
/// zeros; LabelScores are still computed (the labels given BOS alone). No error is raised, so one empty mail does not
/// stop a batch job; filter NaN perplexities if they matter.</para>
/// <para>Rows are scored <see cref="BatchSize"/> at a time by <c>Transform</c> (rows of similar length are padded
/// together; padding never changes a row's values beyond float rounding) and one at a time by a
/// <c>PredictionEngine</c>; the two agree to about 1e-5 relative.</para>
/// </remarks>
public class ScoringOptions
{
    /// <summary>The input text column (type text). Default "Text".</summary>
    public string TextColumnName { get; set; } = "Text";

    /// <summary>Output column of the per-row perplexity; null or empty leaves it out. Default "Perplexity".</summary>
    public string? PerplexityColumnName { get; set; } = "Perplexity";

    /// <summary>Output column of the per-row log-likelihood; null or empty leaves it out. Default "LogLikelihood".</summary>
    public string? LogLikelihoodColumnName { get; set; } = "LogLikelihood";

    /// <summary>Output column of the pooled embedding; null or empty leaves it out. Default "Embedding".</summary>
    public string? EmbeddingColumnName { get; set; } = "Embedding";

    /// <summary>Output column of the label scores (only when <see cref="LabelTexts"/> is set). Default "LabelScores".</summary>
    public string LabelScoresColumnName { get; set; } = "LabelScores";

    /// <summary>Candidate label texts for zero-shot scoring (e.g. " spam", " ham"); null for none.</summary>
    public IReadOnlyList<string>? LabelTexts { get; set; }

    /// <summary>Tokens kept per row, BOS included (longer rows are truncated). Default 512.</summary>
    public int MaxTokens { get; set; } = 512;

    /// <summary>Rows scored together by <c>Transform</c>. Default 8.</summary>
    public int BatchSize { get; set; } = 8;

    /// <summary>How the embedding pools the token states. Default <see cref="EmbeddingPooling.Mean"/>.</summary>
    public EmbeddingPooling Pooling { get; set; } = EmbeddingPooling.Mean;

    /// <summary>
    /// The format the model's weights are held in for inference (<see cref="WeightFormat.Bf16"/>, <see cref="WeightFormat.Int8"/>
    /// or <c>WeightFormat.Parse("int8:64")</c>; activations and accumulation stay fp32). Null (default) keeps the folder's:
    /// fp32 for a Hugging Face folder, the recorded format for a carved one. Stages that profile, carve or fine-tune
    /// run on fp32 weights and convert their result at the end, so set it on the last stage of a chain; the model zip
    /// keeps the format (see <c>docs/architecture.md</c>, "Weight formats").
    /// </summary>
    public WeightFormat? Weights { get; set; }

    /// <summary>Copies the scoring settings of <paramref name="other"/> into this object.</summary>
    /// <param name="other">Options to copy from.</param>
    public void CopyScoringFrom(ScoringOptions other)
    {
        ArgumentNullException.ThrowIfNull(other);
        TextColumnName = other.TextColumnName;
        PerplexityColumnName = other.PerplexityColumnName;
        LogLikelihoodColumnName = other.LogLikelihoodColumnName;
        EmbeddingColumnName = other.EmbeddingColumnName;
        LabelScoresColumnName = other.LabelScoresColumnName;
        LabelTexts = other.LabelTexts?.ToArray();
        MaxTokens = other.MaxTokens;
        BatchSize = other.BatchSize;
        Pooling = other.Pooling;
        Weights = other.Weights;
    }
}

/// <summary>The frozen, checked copy of <see cref="ScoringOptions"/> a transformer keeps and saves.</summary>
internal sealed record ScoringSettings(
    string TextColumn, string? PerplexityColumn, string? LogLikelihoodColumn, string? EmbeddingColumn,
    string LabelScoresColumn, string[] Labels, int MaxTokens, int BatchSize, EmbeddingPooling Pooling)
{
    /// <summary>Checks <paramref name="o"/> and freezes it.</summary>
    /// <exception cref="ArgumentException">A setting is out of range; the message names it.</exception>
    public static ScoringSettings From(ScoringOptions o)
    {
        ArgumentNullException.ThrowIfNull(o);
        if (string.IsNullOrWhiteSpace(o.TextColumnName)) throw new ArgumentException("TextColumnName must name the input text column.");
        if (o.MaxTokens < 2) throw new ArgumentException($"MaxTokens must be at least 2 (BOS + one token); got {o.MaxTokens}.");
        if (o.BatchSize < 1) throw new ArgumentException($"BatchSize must be at least 1; got {o.BatchSize}.");
        if (!Enum.IsDefined(o.Pooling)) throw new ArgumentException($"Pooling {o.Pooling} is not a known EmbeddingPooling.");
        var labels = o.LabelTexts?.ToArray() ?? [];
        if (labels.Any(string.IsNullOrEmpty)) throw new ArgumentException("LabelTexts must not contain null or empty texts.");
        var s = new ScoringSettings(o.TextColumnName, Blank(o.PerplexityColumnName), Blank(o.LogLikelihoodColumnName),
            Blank(o.EmbeddingColumnName), o.LabelScoresColumnName, labels, o.MaxTokens, o.BatchSize, o.Pooling);
        var names = s.OutputNames().ToList();
        if (names.Count == 0)
            throw new ArgumentException("No output column: set at least one of PerplexityColumnName, LogLikelihoodColumnName, EmbeddingColumnName or LabelTexts.");
        var dup = names.GroupBy(n => n).FirstOrDefault(g => g.Count() > 1);
        if (dup is not null) throw new ArgumentException($"Output column name '{dup.Key}' is used twice; give each output its own name.");
        if (labels.Length > 0 && string.IsNullOrWhiteSpace(s.LabelScoresColumn)) throw new ArgumentException("LabelScoresColumnName must be set when LabelTexts is.");
        return s;
    }

    /// <summary>Whether perplexity or log-likelihood is wanted (the LM head then runs).</summary>
    public bool NeedsLikelihood => PerplexityColumn is not null || LogLikelihoodColumn is not null;

    /// <summary>The output column names in output order.</summary>
    public IEnumerable<string> OutputNames()
    {
        if (PerplexityColumn is not null) yield return PerplexityColumn;
        if (LogLikelihoodColumn is not null) yield return LogLikelihoodColumn;
        if (EmbeddingColumn is not null) yield return EmbeddingColumn;
        if (Labels.Length > 0) yield return LabelScoresColumn;
    }

    // Layout: string text, string ppl ("" = none), string ll, string emb, string labelCol, i32 K + K strings,
    // i32 max tokens, i32 batch size, i32 pooling.
    /// <summary>Writes the settings (layout in the comment above).</summary>
    public void Write(BinaryWriter w)
    {
        w.Write(TextColumn);
        w.Write(PerplexityColumn ?? "");
        w.Write(LogLikelihoodColumn ?? "");
        w.Write(EmbeddingColumn ?? "");
        w.Write(LabelScoresColumn);
        w.Write(Labels.Length);
        foreach (string l in Labels) w.Write(l);
        w.Write(MaxTokens);
        w.Write(BatchSize);
        w.Write((int)Pooling);
    }

    /// <summary>Reads what <see cref="Write"/> wrote.</summary>
    /// <param name="r">The header.</param>
    /// <param name="requireOutput">False for transformers with their own output columns (the classifier), whose settings name none.</param>
    public static ScoringSettings Read(BinaryReader r, bool requireOutput = true)
    {
        string text = r.ReadString(), ppl = r.ReadString(), ll = r.ReadString(), emb = r.ReadString(), labelCol = r.ReadString();
        int k = r.ReadInt32();
        if (k is < 0 or > 100_000) throw new CMoEFormatException($"Invalid label count {k} in a CMoE scoring header; the model zip is corrupt.");
        var labels = new string[k];
        for (int i = 0; i < k; i++) labels[i] = r.ReadString();
        int maxTokens = r.ReadInt32(), batch = r.ReadInt32(), pooling = r.ReadInt32();
        if (!requireOutput)
        {
            if (maxTokens < 2 || batch < 1 || string.IsNullOrWhiteSpace(text))
                throw new CMoEFormatException($"Invalid text column, max tokens {maxTokens} or batch size {batch} in a CMoE classifier header; the model zip is corrupt.");
            return ForText(text, maxTokens, batch);
        }
        return From(new ScoringOptions
        {
            TextColumnName = text, PerplexityColumnName = ppl, LogLikelihoodColumnName = ll, EmbeddingColumnName = emb,
            LabelScoresColumnName = labelCol, LabelTexts = labels.Length == 0 ? null : labels, MaxTokens = maxTokens,
            BatchSize = batch, Pooling = (EmbeddingPooling)pooling,
        });
    }

    /// <summary>Settings that name only the text column (transformers with their own outputs, e.g. the classifier).</summary>
    public static ScoringSettings ForText(string textColumn, int maxTokens, int batchSize)
    {
        if (string.IsNullOrWhiteSpace(textColumn)) throw new ArgumentException("TextColumnName must name the input text column.");
        if (maxTokens < 2) throw new ArgumentException($"MaxTokens must be at least 2 (BOS + one token); got {maxTokens}.");
        if (batchSize < 1) throw new ArgumentException($"BatchSize must be at least 1; got {batchSize}.");
        return new ScoringSettings(textColumn, null, null, null, "LabelScores", [], maxTokens, batchSize, EmbeddingPooling.Mean);
    }

    private static string? Blank(string? name) => string.IsNullOrWhiteSpace(name) ? null : name;

    /// <summary>For messages.</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{TextColumn} -> {string.Join(", ", OutputNames())}");
}
