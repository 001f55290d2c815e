using CMoE.MLNet.Data;
using CMoE.MLNet.Persistence;
using CMoE.MLNet.Scoring;
using CMoE.Training;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using TorchSharp;

namespace CMoE.MLNet;

/// <summary>What a <see cref="LanguageModelClassifierTrainer"/> predicts.</summary>
public enum ClassifierTask
{
    /// <summary>Two classes; Boolean label; outputs Score (margin z_true - z_false), Probability, PredictedLabel (Boolean).</summary>
    Binary,
    /// <summary>C classes; key-typed label (<c>MapValueToKey</c>); outputs PredictedLabel (same key type), Score (C probabilities).</summary>
    Multiclass,
}

/// <summary>
/// Fine-tunes a dense or carved LLaMA-family model end to end into a text classifier (a linear head on the last-token or
/// mean-pooled final hidden state, trained with LoRA or fully on the backbone; see <see cref="ClassifierFineTuner"/>).
/// Created by <c>mlContext.BinaryClassification.Trainers.LanguageModelClassifier(...)</c> or
/// <c>mlContext.MulticlassClassification.Trainers.LanguageModelClassifier(...)</c>.
/// </summary>
/// <remarks>
/// Follows <c>Microsoft.ML.TorchSharp</c>'s <c>TextClassification</c>: a label column and a text column in; PredictedLabel and
/// Score out. Binary: the label is Boolean (as ML.NET's binary trainers take it), Score is the logit margin, Probability is
/// P(true), PredictedLabel is Probability &gt; 0.5, so <c>BinaryClassification.Evaluate</c> works unchanged. Multiclass: the
/// label is a key (map text or numbers with <c>MapValueToKey</c> first, as TextClassification requires); PredictedLabel has the
/// same key type and its key values, so <c>MapKeyToValue</c> turns it back; Score holds the C class probabilities.
/// The model is a model folder (<see cref="Options.ModelFolder"/>) or, when that is empty, the model of the nearest upstream
/// CMoE stage (e.g. <c>CarveMoE</c>), copied. Each row is BOS + text cut to <see cref="Options.MaxTokens"/> tokens.
/// </remarks>
public sealed class LanguageModelClassifierTrainer : IEstimator<LanguageModelClassifierTransformer>
{
    private readonly IHostEnvironment _env;
    private readonly Options _options;
    private readonly ClassifierTask _task;
    private readonly string? _modelFolder;

    /// <summary>Options of <see cref="LanguageModelClassifierTrainer"/>.</summary>
    public sealed class Options
    {
        /// <summary>A dense Hugging Face LLaMA folder or a carved folder; empty: the model of the upstream CMoE stage.</summary>
        public string? ModelFolder { get; set; }

        /// <summary>The label column: Boolean (binary) or key-typed (multiclass). Default "Label".</summary>
        public string LabelColumnName { get; set; } = "Label";

        /// <summary>The text column. Default "Text".</summary>
        public string TextColumnName { get; set; } = "Text";

        /// <summary>The score column written (binary: margin; multiclass: class probabilities). Default "Score".</summary>
        public string ScoreColumnName { get; set; } = "Score";

        /// <summary>The predicted label column written. Default "PredictedLabel".</summary>
        public string PredictedLabelColumnName { get; set; } = "PredictedLabel";

        /// <summary>The probability column written (binary only). Default "Probability".</summary>
        public string ProbabilityColumnName { get; set; } = "Probability";

        /// <summary>Tokens per row, BOS included, in training and scoring. Default 64.</summary>
        public int MaxTokens { get; set; } = 64;

        /// <summary>Passes over the training rows. Default 1.</summary>
        public int Epochs { get; set; } = 1;

        /// <summary>Rows per optimiser step. Default 16.</summary>
        public int BatchSize { get; set; } = 16;

        /// <summary>Rows scored together by the transformer's cursor. Default 64.</summary>
        public int ScoringBatchSize { get; set; } = 64;

        /// <summary>Stop after this many optimiser steps (0: <see cref="Epochs"/> passes). Default 0.</summary>
        public int MaxSteps { get; set; }

        /// <summary>LoRA on the backbone (default) or full training of the same matrices.</summary>
        public FineTuneMode Mode { get; set; } = FineTuneMode.Lora;

        /// <summary>Peak learning rate of the adapters (full mode: of the weights; use ~5e-5 there). Default 1e-3.</summary>
        public double LearningRate { get; set; } = 1e-3;

        /// <summary>Peak learning rate of the head. Default 2e-3.</summary>
        public double HeadLearningRate { get; set; } = 2e-3;

        /// <summary>LoRA rank. Default 8.</summary>
        public int LoraRank { get; set; } = 8;

        /// <summary>LoRA alpha. Default 16.</summary>
        public double LoraAlpha { get; set; } = 16;

        /// <summary>LoRA dropout. Default 0.05.</summary>
        public double LoraDropout { get; set; } = 0.05;

        /// <summary>Learning rate of the router scale u (carved models). Default 1e-3.</summary>
        public double RouterScaleLearningRate { get; set; } = 1e-3;

        /// <summary>Router bias step gamma while training (carved models; 0 disables balancing). Default 1e-3.</summary>
        public double BiasStep { get; set; } = 1e-3;

        /// <summary>AdamW weight decay. Default 0.01.</summary>
        public double WeightDecay { get; set; } = 0.01;

        /// <summary>Head input: the mean over the real tokens' states (default) or the last real token's state.</summary>
        public ClassifierPooling Pooling { get; set; } = ClassifierPooling.Mean;

        /// <summary>Weight each class's loss by the inverse of its frequency (imbalanced labels). Default false.</summary>
        public bool ClassWeighting { get; set; }

        /// <summary>Fraction of the training rows held out for early stopping (0: none). Default 0.1.</summary>
        public double ValidationFraction { get; set; } = 0.1;

        /// <summary>Validation passes without improvement before training stops (0: never early). Default 2.</summary>
        public int Patience { get; set; } = 2;

        /// <summary>Steps between validation passes (0: once per epoch). Default 0.</summary>
        public int ValidationEvery { get; set; }

        /// <summary>Seed of the head and LoRA initialisation, validation split, row order and dropout. Default 0.</summary>
        public int Seed { get; set; }

        /// <summary>Receives a report after each step (tokens/s, ETA, validation figures).</summary>
        public IProgress<ClassifierProgress>? Progress { get; set; }

        /// <summary>
        /// Where training runs (null: the CPU). The model is moved there for training (resolve a CUDA device with
        /// <c>TorchRuntime.Resolve</c>) and back to the CPU afterwards: scoring and the model zip are CPU fp32.
        /// </summary>
        public TorchSharp.torch.Device? TrainingDevice { get; set; }

        /// <summary>Cancels training (Fit throws <see cref="OperationCanceledException"/>).</summary>
        public CancellationToken Cancellation { get; set; }

        /// <summary>The core's options (checked).</summary>
        internal ClassifierOptions ToCore() => new()
        {
            Mode = Mode, LoraRank = LoraRank, LoraAlpha = LoraAlpha, LoraDropout = LoraDropout, LearningRate = LearningRate,
            HeadLearningRate = HeadLearningRate, RouterLearningRate = RouterScaleLearningRate, BiasSpeed = BiasStep, WeightDecay = WeightDecay,
            Epochs = Epochs, BatchSize = BatchSize, MaxSteps = MaxSteps, Pooling = Pooling, ClassWeighting = ClassWeighting,
            ValidationFraction = ValidationFraction, Patience = Patience, ValidationEvery = ValidationEvery, Seed = Seed,
        };
    }

    internal LanguageModelClassifierTrainer(IHostEnvironment env, Options options, ClassifierTask task)
    {
        ArgumentNullException.ThrowIfNull(env);
        ArgumentNullException.ThrowIfNull(options);
        MlNetVersionGuard.EnsureSupported();
        foreach (var (name, value) in new[] { ("LabelColumnName", options.LabelColumnName), ("TextColumnName", options.TextColumnName),
                     ("ScoreColumnName", options.ScoreColumnName), ("PredictedLabelColumnName", options.PredictedLabelColumnName) })
            if (string.IsNullOrWhiteSpace(value)) throw new ArgumentException($"{name} must name a column.", nameof(options));
        if (task == ClassifierTask.Binary && string.IsNullOrWhiteSpace(options.ProbabilityColumnName))
            throw new ArgumentException("ProbabilityColumnName must name a column (binary classification writes Score, Probability and PredictedLabel).", nameof(options));
        var outputs = OutputNames(options, task);
        if (outputs.Distinct().Count() != outputs.Length)
            throw new ArgumentException($"Output column names must differ (got {string.Join(", ", outputs)}).", nameof(options));
        if (options.MaxTokens < 2) throw new ArgumentException($"MaxTokens must be at least 2 (BOS + one token); got {options.MaxTokens}.", nameof(options));
        if (options.ScoringBatchSize < 1) throw new ArgumentException($"ScoringBatchSize must be at least 1; got {options.ScoringBatchSize}.", nameof(options));
        try
        {
            options.ToCore().Validate();
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"LanguageModelClassifier: {e.Message}", nameof(options), e);
        }
        if (!string.IsNullOrWhiteSpace(options.ModelFolder))
        {
            if (!Directory.Exists(options.ModelFolder))
                throw new DirectoryNotFoundException($"Model folder '{options.ModelFolder}' not found; pass a Hugging Face LLaMA folder or a carved folder, or leave ModelFolder empty to fine-tune the model of an upstream CMoE stage (e.g. CarveMoE).");
            _modelFolder = Path.GetFullPath(options.ModelFolder);
        }
        _env = env;
        _options = options;
        _task = task;
    }

    private static string[] OutputNames(Options o, ClassifierTask task) => task == ClassifierTask.Binary
        ? [o.ScoreColumnName, o.ProbabilityColumnName, o.PredictedLabelColumnName]
        : [o.PredictedLabelColumnName, o.ScoreColumnName];

    /// <summary>Fine-tunes a copy of the model on the label and text columns of <paramref name="input"/>.</summary>
    /// <param name="input">The training data.</param>
    public LanguageModelClassifierTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        var text = new InputColumn(_options.TextColumnName, TextDataViewType.Instance).Find(input.Schema, nameof(LanguageModelClassifierTrainer));
        var label = LabelColumn(input.Schema);
        int classes = _task == ClassifierTask.Binary ? 2 : checked((int)((KeyDataViewType)label.Type).Count);
        if (classes < 2) throw new ArgumentException($"The label column '{label.Name}' has {classes} key values; a classifier needs at least 2.");
        string[] keyNames = _task == ClassifierTask.Multiclass ? KeyNames(label, classes) : [];

        LanguageModelHandle handle;
        if (_modelFolder is not null) handle = LanguageModelHandle.FromFolder(_modelFolder);
        else
        {
            var upstream = LanguageModelTransformerBase.Upstream<LanguageModelTransformerBase>(input)
                ?? throw new InvalidOperationException("LanguageModelClassifier has no model: set Options.ModelFolder, or chain it after a CMoE stage such as mlContext.Transforms.CarveMoE(...).");
            handle = upstream.Handle.Clone();
        }
        try
        {
            handle.RequireFp32(nameof(LanguageModelClassifierTrainer));
            var settings = ScoringSettings.ForText(_options.TextColumnName, _options.MaxTokens, _options.ScoringBatchSize);
            long pad = handle.Tokenizer.EosId ?? 0;
            var (rows, labels) = ReadRows(input, text, label, handle, settings, pad);
            if (rows.Count < 2) throw new ArgumentException($"LanguageModelClassifier needs at least 2 labelled rows to train; got {rows.Count}.");
            ClassifierReport report;
            (float[] W, float[] B) head;
            var device = _options.TrainingDevice;
            bool moved = device is not null && device.type != TorchSharp.DeviceType.CPU;
            if (moved) handle.Model.to(device!);
            try
            {
                using var tuner = new ClassifierFineTuner(handle.Model, classes, pad, _options.ToCore());
                report = tuner.Train(rows, labels, _options.Progress, _options.Cancellation);
                using var classifier = tuner.Classifier;
                tuner.Finish();
                head = classifier.HeadValues();
            }
            finally
            {
                if (moved) handle.Model.to(TorchSharp.torch.CPU);
            }
            handle.MarkChanged(handle.Layout);
            var info = new ClassifierInfo(_task, _options.LabelColumnName, _options.ScoreColumnName, _options.PredictedLabelColumnName,
                _task == ClassifierTask.Binary ? _options.ProbabilityColumnName : "", _options.Pooling, classes, head.W, head.B, pad, keyNames);
            return new LanguageModelClassifierTransformer(_env, handle, settings, info) { TrainingReport = report };
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private DataViewSchema.Column LabelColumn(DataViewSchema schema)
    {
        var column = schema.GetColumnOrNull(_options.LabelColumnName)
            ?? throw new ArgumentOutOfRangeException(nameof(schema), $"LanguageModelClassifier: label column '{_options.LabelColumnName}' not found. Input columns: " +
                $"{string.Join(", ", schema.Where(c => !c.IsHidden).Select(c => $"{c.Name} ({c.Type})"))}.");
        bool ok = _task == ClassifierTask.Binary ? column.Type is BooleanDataViewType : column.Type is KeyDataViewType { RawType: var raw } && raw == typeof(uint);
        if (!ok)
            throw new ArgumentOutOfRangeException(nameof(schema), _task == ClassifierTask.Binary
                ? $"LanguageModelClassifier: label column '{column.Name}' has type {column.Type}; binary classification needs Boolean. Convert it (e.g. CustomMapping or a bool property), or use MulticlassClassification with MapValueToKey."
                : $"LanguageModelClassifier: label column '{column.Name}' has type {column.Type}; multiclass classification needs a key type. Add mlContext.Transforms.Conversion.MapValueToKey(\"{column.Name}\") before the trainer.");
        return column;
    }

    private static string[] KeyNames(DataViewSchema.Column label, int classes)
    {
        if (label.Annotations.Schema.GetColumnOrNull("KeyValues") is not { } kv || kv.Type is not VectorDataViewType { ItemType: TextDataViewType })
            return [];
        VBuffer<ReadOnlyMemory<char>> names = default;
        label.GetKeyValues(ref names);
        var result = names.DenseValues().Select(n => n.ToString()).ToArray();
        return result.Length == classes ? result : [];
    }

    private (List<int[]> Rows, List<int> Labels) ReadRows(IDataView input, DataViewSchema.Column text, DataViewSchema.Column label,
        LanguageModelHandle handle, ScoringSettings settings, long pad)
    {
        var rows = new List<int[]>();
        var labels = new List<int>();
        using var cursor = input.GetRowCursor([text, label]);
        var getText = cursor.GetGetter<ReadOnlyMemory<char>>(text);
        ValueGetter<bool>? getBool = _task == ClassifierTask.Binary ? cursor.GetGetter<bool>(label) : null;
        ValueGetter<uint>? getKey = _task == ClassifierTask.Multiclass ? cursor.GetGetter<uint>(label) : null;
        ReadOnlyMemory<char> t = default;
        bool b = false;
        uint k = 0;
        while (cursor.MoveNext())
        {
            _options.Cancellation.ThrowIfCancellationRequested();
            int y;
            if (getBool is not null) { getBool(ref b); y = b ? 1 : 0; }
            else
            {
                getKey!(ref k);
                if (k == 0) continue;                                                        // missing label
                y = (int)k - 1;
            }
            getText(ref t);
            rows.Add(LanguageModelClassifierTransformer.Encode(handle, settings, t.ToString(), pad));
            labels.Add(y);
        }
        return (rows, labels);
    }

    /// <summary>The input shape plus the prediction columns; throws naming a missing or mistyped column.</summary>
    /// <param name="inputSchema">The shape of the data Fit will see.</param>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        string Columns() => string.Join(", ", inputSchema.Select(c => c.Name));
        if (inputSchema.LastOrDefault(c => c.Name == _options.TextColumnName) is not { Name: not null } text)
            throw new ArgumentOutOfRangeException(nameof(inputSchema), $"LanguageModelClassifier: text column '{_options.TextColumnName}' not found. Input columns: {Columns()}.");
        if (text.Kind != SchemaShape.Column.VectorKind.Scalar || text.ItemType is not TextDataViewType)
            throw new ArgumentOutOfRangeException(nameof(inputSchema), $"LanguageModelClassifier: text column '{_options.TextColumnName}' has type {text.ItemType}; it must be a scalar String.");
        if (inputSchema.LastOrDefault(c => c.Name == _options.LabelColumnName) is not { Name: not null } label)
            throw new ArgumentOutOfRangeException(nameof(inputSchema), $"LanguageModelClassifier: label column '{_options.LabelColumnName}' not found. Input columns: {Columns()}.");
        var builder = new DataViewSchema.Builder();
        if (_task == ClassifierTask.Binary)
        {
            if (label.Kind != SchemaShape.Column.VectorKind.Scalar || label.ItemType is not BooleanDataViewType)
                throw new ArgumentOutOfRangeException(nameof(inputSchema), $"LanguageModelClassifier: label column '{label.Name}' has type {label.ItemType}; binary classification needs Boolean.");
            builder.AddColumn(_options.ScoreColumnName, NumberDataViewType.Single);
            builder.AddColumn(_options.ProbabilityColumnName, NumberDataViewType.Single);
            builder.AddColumn(_options.PredictedLabelColumnName, BooleanDataViewType.Instance);
        }
        else
        {
            if (label.Kind != SchemaShape.Column.VectorKind.Scalar || !label.IsKey || label.ItemType.RawType != typeof(uint))
                throw new ArgumentOutOfRangeException(nameof(inputSchema), $"LanguageModelClassifier: label column '{label.Name}' has type {label.ItemType}; multiclass classification needs a key type (MapValueToKey).");
            // A SchemaShape records that these are a key and a fixed-size vector, not their sizes (known only at Fit).
            DataViewSchema.Annotations? keyValues = null;
            if (label.Annotations.Any(a => a.Name == "KeyValues"))
            {
                var annotations = new DataViewSchema.Annotations.Builder();
                annotations.Add("KeyValues", new VectorDataViewType(TextDataViewType.Instance, 2),
                    (ValueGetter<VBuffer<ReadOnlyMemory<char>>>)((ref VBuffer<ReadOnlyMemory<char>> dst) => dst = new VBuffer<ReadOnlyMemory<char>>(2, ["0".AsMemory(), "1".AsMemory()])));
                keyValues = annotations.ToAnnotations();
            }
            builder.AddColumn(_options.PredictedLabelColumnName, new KeyDataViewType(typeof(uint), 2), keyValues);
            builder.AddColumn(_options.ScoreColumnName, new VectorDataViewType(NumberDataViewType.Single, 2));
        }
        var added = MlNetBridge.ShapeOf(builder.ToSchema());
        var names = OutputNames(_options, _task).ToHashSet();
        return new SchemaShape(inputSchema.Where(c => !names.Contains(c.Name)).Concat(added));
    }
}

/// <summary>What a fitted classifier knows besides the model (saved in its header).</summary>
internal sealed record ClassifierInfo(ClassifierTask Task, string LabelColumn, string ScoreColumn, string PredictedLabelColumn, string ProbabilityColumn,
    ClassifierPooling Pooling, int Classes, float[] Weight, float[] Bias, long PadId, string[] KeyNames)
{
    // Layout (after the common header of LanguageModelTransformerBase): i32 task, string label, string score, string predicted,
    // string probability ("" for multiclass), i32 pooling, i32 C, i32 d, C*d f32 (W row-major), C f32 (b), i64 pad id,
    // i32 K (0 or C) + K strings (the label's key values).
    public void Write(BinaryWriter w)
    {
        w.Write((int)Task);
        w.Write(LabelColumn);
        w.Write(ScoreColumn);
        w.Write(PredictedLabelColumn);
        w.Write(ProbabilityColumn);
        w.Write((int)Pooling);
        w.Write(Classes);
        w.Write(Weight.Length / Classes);
        foreach (float v in Weight) w.Write(v);
        foreach (float v in Bias) w.Write(v);
        w.Write(PadId);
        w.Write(KeyNames.Length);
        foreach (string n in KeyNames) w.Write(n);
    }

    public static ClassifierInfo Read(BinaryReader r, int hidden)
    {
        var task = (ClassifierTask)r.ReadInt32();
        string label = r.ReadString(), score = r.ReadString(), predicted = r.ReadString(), probability = r.ReadString();
        var pooling = (ClassifierPooling)r.ReadInt32();
        int classes = r.ReadInt32(), d = r.ReadInt32();
        if (!Enum.IsDefined(task) || !Enum.IsDefined(pooling) || classes is < 2 or > 1_000_000 || d != hidden || (task == ClassifierTask.Binary && classes != 2))
            throw new CMoEFormatException($"Invalid classifier header (task {(int)task}, pooling {(int)pooling}, {classes} classes, width {d} for a model of hidden size {hidden}); the model zip is corrupt. Save it again.");
        var weight = new float[classes * d];
        for (int i = 0; i < weight.Length; i++) weight[i] = r.ReadSingle();
        var bias = new float[classes];
        for (int i = 0; i < classes; i++) bias[i] = r.ReadSingle();
        long pad = r.ReadInt64();
        int k = r.ReadInt32();
        if (k != 0 && k != classes) throw new CMoEFormatException($"Invalid classifier header ({k} key names for {classes} classes); the model zip is corrupt.");
        var names = new string[k];
        for (int i = 0; i < k; i++) names[i] = r.ReadString();
        return new ClassifierInfo(task, label, score, predicted, probability, pooling, classes, weight, bias, pad, names);
    }
}

/// <summary>
/// A fine-tuned language-model classifier (see <see cref="LanguageModelClassifierTrainer"/>): appends PredictedLabel and Score
/// (and Probability for binary) to each row, scoring rows in batches through the model's fast inference paths; works with
/// <c>PredictionEngine</c>; saved and loaded with the model zip (the backbone as a model folder, the head in the header).
/// </summary>
public sealed class LanguageModelClassifierTransformer : LanguageModelTransformerBase, ILoadableTransformer<LanguageModelClassifierTransformer>
{
    private static readonly ModelFormat FormatInfo = new("CMoEClassifier", "CMOECLSF", Version: 1);
    private readonly ClassifierInfo _info;
    private readonly SequenceClassifier _classifier;

    internal LanguageModelClassifierTransformer(IHostEnvironment env, LanguageModelHandle handle, ScoringSettings settings, ClassifierInfo info)
        : base(env, nameof(LanguageModelClassifierTransformer), handle, settings)
    {
        _info = info;
        _classifier = new SequenceClassifier(handle.Model, info.Pooling, info.Weight, info.Bias, info.PadId);
    }

    /// <summary>Binary or multiclass.</summary>
    public ClassifierTask Task => _info.Task;

    /// <summary>Number of classes.</summary>
    public int Classes => _info.Classes;

    /// <summary>The training figures of the Fit that made this transformer (null after loading from a zip).</summary>
    public ClassifierReport? TrainingReport { get; init; }

    static ModelFormat ILoadableTransformer<LanguageModelClassifierTransformer>.Format => FormatInfo;

    private protected override ModelFormat SaveFormat => FormatInfo;

    private protected override IReadOnlyList<(string Name, DataViewType Type)> OutputColumns => _info.Task == ClassifierTask.Binary
        ? [(_info.ScoreColumn, NumberDataViewType.Single), (_info.ProbabilityColumn, NumberDataViewType.Single), (_info.PredictedLabelColumn, BooleanDataViewType.Instance)]
        : [(_info.PredictedLabelColumn, new KeyDataViewType(typeof(uint), _info.Classes)), (_info.ScoreColumn, new VectorDataViewType(NumberDataViewType.Single, _info.Classes))];

    private protected override DataViewSchema.Annotations? OutputAnnotations(string name)
    {
        if (_info.Task != ClassifierTask.Multiclass || _info.KeyNames.Length == 0 || name != _info.PredictedLabelColumn) return null;
        var builder = new DataViewSchema.Annotations.Builder();
        var names = new VBuffer<ReadOnlyMemory<char>>(_info.KeyNames.Length, _info.KeyNames.Select(n => n.AsMemory()).ToArray());
        builder.Add("KeyValues", new VectorDataViewType(TextDataViewType.Instance, _info.KeyNames.Length),
            (ValueGetter<VBuffer<ReadOnlyMemory<char>>>)((ref VBuffer<ReadOnlyMemory<char>> dst) => names.CopyTo(ref dst)));
        return builder.ToAnnotations();
    }

    /// <summary>BOS + text cut to the settings' MaxTokens (at least one token: the pad id for an empty text without BOS).</summary>
    internal static int[] Encode(LanguageModelHandle handle, ScoringSettings settings, string text, long pad)
    {
        var ids = handle.Tokenizer.Encode(text ?? "", addBos: true);
        if (ids.Length == 0) return [(int)pad];
        return ids.Length > settings.MaxTokens ? ids[..settings.MaxTokens] : ids;
    }

    private protected override void MapBatch(IReadOnlyList<object[]> inputs, object[][] outputs)
    {
        var rows = inputs.Select(r => Encode(Handle, Settings, (string)r[0], _info.PadId)).ToList();
        var logits = _classifier.LogitsOf(rows);
        for (int r = 0; r < rows.Count; r++)
        {
            var p = SequenceClassifier.Softmax(logits[r]);
            if (_info.Task == ClassifierTask.Binary)
            {
                outputs[r][0] = logits[r][1] - logits[r][0];
                outputs[r][1] = p[1];
                outputs[r][2] = p[1] > 0.5f;
            }
            else
            {
                outputs[r][0] = (uint)(Array.IndexOf(p, p.Max()) + 1);
                outputs[r][1] = p;
            }
        }
    }

    private protected override void WriteExtra(ModelPayload payload) => _info.Write(payload.Header);

    private protected override void OnDispose() => _classifier.Dispose();

    static LanguageModelClassifierTransformer ILoadableTransformer<LanguageModelClassifierTransformer>.Load(IHostEnvironment env, ModelPayloadReader payload)
    {
        var (handle, settings) = ReadModel(payload, requireOutput: false);
        try
        {
            var info = ClassifierInfo.Read(payload.Header, handle.Model.Config.HiddenSize);
            return new LanguageModelClassifierTransformer(env, handle, settings, info);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }
}
