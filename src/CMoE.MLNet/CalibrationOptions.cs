using CMoE.Carving;
using CMoE.MLNet.Data;
using CMoE.Modeling.Tokenization;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace CMoE.MLNet;

/// <summary>Progress of a CMoE estimator's Fit: the stage ("profile", "carve", "router", "fine-tune") and its steps.</summary>
/// <param name="Stage">What is running.</param>
/// <param name="Done">Steps done.</param>
/// <param name="Total">Steps in the stage.</param>
public sealed record CMoEProgress(string Stage, int Done, int Total);

/// <summary>
/// Options of the estimators that learn from calibration text (profiling, carving, router fitting, fine-tuning),
/// plus the scoring settings of the transformer they return.
/// </summary>
/// <remarks>
/// The calibration data is the input IDataView's <see cref="ScoringOptions.TextColumnName"/> column: every row is
/// encoded with BOS in front, the rows are concatenated in order into one token stream, and
/// <see cref="CalibrationSamples"/> windows of <see cref="CalibrationLength"/> tokens are drawn from it at random
/// starts (<see cref="Seed"/>), as <c>CalibrationSampler</c> does for the CLI.
/// </remarks>
public class CalibrationOptions : ScoringOptions
{
    /// <summary>Calibration windows (the paper uses 8). Default 8.</summary>
    public int CalibrationSamples { get; set; } = 8;

    /// <summary>Tokens per calibration window (the paper uses 2048; our reference runs 512). Default 512.</summary>
    public int CalibrationLength { get; set; } = 512;

    /// <summary>Seed of the window starts. Default 0.</summary>
    public int Seed { get; set; }

    /// <summary>Receives progress during Fit (ML.NET's own channels do not surface progress); null for none.</summary>
    public IProgress<CMoEProgress>? Progress { get; set; }

    /// <summary>Cancels Fit between steps (throws <see cref="OperationCanceledException"/>; nothing is returned).</summary>
    public CancellationToken Cancellation { get; set; }

    /// <summary>Copies the calibration and scoring settings of <paramref name="other"/> into this object.</summary>
    /// <param name="other">Options to copy from.</param>
    public void CopyCalibrationFrom(CalibrationOptions other)
    {
        ArgumentNullException.ThrowIfNull(other);
        CopyScoringFrom(other);
        CalibrationSamples = other.CalibrationSamples;
        CalibrationLength = other.CalibrationLength;
        Seed = other.Seed;
        Progress = other.Progress;
        Cancellation = other.Cancellation;
    }

    /// <summary>Checks the calibration knobs.</summary>
    internal void ValidateCalibration()
    {
        if (CalibrationSamples < 1) throw new ArgumentException($"CalibrationSamples must be at least 1; got {CalibrationSamples}.");
        if (CalibrationLength < 2) throw new ArgumentException($"CalibrationLength must be at least 2; got {CalibrationLength}.");
    }
}

/// <summary>Reads calibration windows from an IDataView's text column.</summary>
internal static class CalibrationData
{
    /// <summary>
    /// Encodes every row of <paramref name="options"/>' text column (BOS first), concatenates them and samples the
    /// windows [samples, length]. Throws naming the column when it is missing or not text, and naming the token count
    /// when the data is too short for one window.
    /// </summary>
    public static long[,] Windows(IDataView data, TextTokenizer tokenizer, CalibrationOptions options, string stage)
    {
        ArgumentNullException.ThrowIfNull(data);
        options.ValidateCalibration();
        var column = new InputColumn(options.TextColumnName, TextDataViewType.Instance).Find(data.Schema, stage);
        var stream = new List<int>();
        long rows = 0;
        using (var cursor = data.GetRowCursor([column]))
        {
            var get = cursor.GetGetter<ReadOnlyMemory<char>>(column);
            ReadOnlyMemory<char> value = default;
            while (cursor.MoveNext())
            {
                options.Cancellation.ThrowIfCancellationRequested();
                get(ref value);
                rows++;
                if (value.IsEmpty) continue;
                stream.AddRange(tokenizer.Encode(value.ToString(), addBos: true));
            }
        }
        if (stream.Count < options.CalibrationLength)
            throw new ArgumentException(
                $"{stage}: the calibration text (column '{options.TextColumnName}', {rows} rows) has {stream.Count} tokens, fewer than one " +
                $"window of CalibrationLength = {options.CalibrationLength}. Pass more text or lower CalibrationLength.");
        return CalibrationSampler.Sample(stream, options.CalibrationSamples, options.CalibrationLength, options.Seed);
    }
}
