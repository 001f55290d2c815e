using System.Runtime.InteropServices;
using CMoE.MLNet.Data;
using CMoE.MLNet.Persistence;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;

// Also compiled into tests/CMoE.ZipProbe, so a separate process can load what the tests save.
namespace CMoE.Tests.Persistence;

/// <summary>
/// The smallest real CMoE-style transformer: it holds a large weight blob and appends
/// <c>Score = sum_i Features[i] * folded[i]</c>, where <c>folded[i] = sum over j = i (mod D) of weights[j]</c>,
/// so every saved weight changes the output. It shows how a transformer uses <see cref="RowMapperTransformerBase"/>
/// and the persistence bridge.
/// </summary>
internal sealed class WeightedSumTransformer : RowMapperTransformerBase, ILoadableTransformer<WeightedSumTransformer>
{
    /// <summary>Vector size used by the probe and most tests.</summary>
    public const int SampleDimension = 8;

    private const string WeightsEntry = "weights.f32";
    private readonly float[] _folded;

    /// <summary>Creates the transformer and registers its loader in <paramref name="env"/>.</summary>
    public WeightedSumTransformer(IHostEnvironment env, float[] weights, int dimension,
        string inputColumn = "Features", string outputColumn = "Score", int batchSize = 1)
        : base(env, nameof(WeightedSumTransformer))
    {
        if (dimension <= 0) throw new ArgumentOutOfRangeException(nameof(dimension), "must be positive");
        Weights = weights;
        Dimension = dimension;
        InputColumnName = inputColumn;
        OutputColumnName = outputColumn;
        Batch = batchSize;
        _folded = new float[dimension];
        for (int j = 0; j < weights.Length; j++) _folded[j % dimension] += weights[j];
        MlNetBridge.RegisterLoader<WeightedSumTransformer>(env);
    }

    public float[] Weights { get; }
    public int Dimension { get; }
    public string InputColumnName { get; }
    public string OutputColumnName { get; }
    public int Batch { get; }

    /// <summary>Number of MapBatch calls, to check batching.</summary>
    public int MapBatchCalls { get; private set; }

    /// <summary>The format saves use; tests override it to fake a file from a future version.</summary>
    internal ModelFormat SaveFormat { get; init; } = Format;

    public static ModelFormat Format { get; } = new("CMoETestWeightedSum", "CMOETWSM", Version: 1);

    private protected override IReadOnlyList<InputColumn> InputColumns =>
        [new InputColumn(InputColumnName, new VectorDataViewType(NumberDataViewType.Single, Dimension))];

    private protected override IReadOnlyList<(string Name, DataViewType Type)> OutputColumns =>
        [(OutputColumnName, NumberDataViewType.Single)];

    private protected override int BatchSize => Batch;

    private protected override void MapBatch(IReadOnlyList<object[]> inputs, object[][] outputs)
    {
        MapBatchCalls++;
        for (int r = 0; r < inputs.Count; r++)
        {
            var x = (float[])inputs[r][0];
            float score = 0;
            for (int i = 0; i < x.Length; i++) score += x[i] * _folded[i];
            outputs[r][0] = score;
        }
    }

    // Header: string input column, string output column, i32 dimension, i32 batch size, i64 weight count.
    // Entry "weights.f32": the weights, float32 little-endian.
    private protected override ModelPayload CreatePayload()
    {
        var payload = new ModelPayload(SaveFormat);
        payload.Header.Write(InputColumnName);
        payload.Header.Write(OutputColumnName);
        payload.Header.Write(Dimension);
        payload.Header.Write(Batch);
        payload.Header.Write((long)Weights.Length);
        return payload.Add(WeightsEntry, MemoryMarshal.AsBytes(Weights.AsSpan()).ToArray());
    }

    public static WeightedSumTransformer Load(IHostEnvironment env, ModelPayloadReader payload)
    {
        string input = payload.Header.ReadString();
        string output = payload.Header.ReadString();
        int dimension = payload.Header.ReadInt32();
        int batch = payload.Header.ReadInt32();
        long count = payload.Header.ReadInt64();
        if (payload.GetLength(WeightsEntry) != count * sizeof(float))
            throw new CMoEFormatException($"'{WeightsEntry}' holds {payload.GetLength(WeightsEntry)} bytes, expected {count} floats.");
        var weights = new float[count];
        payload.Read(WeightsEntry, s => { s.ReadExactly(MemoryMarshal.AsBytes(weights.AsSpan())); return 0; });
        return new WeightedSumTransformer(env, weights, dimension, input, output, batch);
    }

    /// <summary>Deterministic weights in [-1, 1).</summary>
    public static float[] RandomWeights(int count, int seed)
    {
        var random = new Random(seed);
        var w = new float[count];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(random.NextDouble() * 2 - 1);
        return w;
    }
}

/// <summary>An input row for <see cref="WeightedSumTransformer"/> with <see cref="WeightedSumTransformer.SampleDimension"/>.</summary>
public sealed class WeightedSumInput
{
    [VectorType(WeightedSumTransformer.SampleDimension)]
    public float[] Features { get; set; } = [];
}

/// <summary>The prediction of <see cref="WeightedSumTransformer"/>.</summary>
public sealed class WeightedSumOutput
{
    public float Score { get; set; }
}
