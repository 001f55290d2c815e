using CMoE.MLNet.Data;
using CMoE.MLNet.Persistence;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;

namespace CMoE.Tests.Persistence;

/// <summary>
/// A transformer whose saved state is one file of any size (the payload entry "blob.bin", streamed from and to disk),
/// for entries too large for a byte[]. It appends <c>Score</c> = the blob's length in GiB; after a load the blob is the
/// extracted file at <see cref="Path"/> (deleted with the transformer).
/// </summary>
internal sealed class BlobTransformer : RowMapperTransformerBase, ILoadableTransformer<BlobTransformer>, IDisposable
{
    private const string BlobEntry = "blob.bin";
    private readonly bool _owned;

    public BlobTransformer(IHostEnvironment env, string path, bool owned = false) : base(env, nameof(BlobTransformer))
    {
        Path = path;
        _owned = owned;
        MlNetBridge.RegisterLoader<BlobTransformer>(env);
    }

    /// <summary>The blob file.</summary>
    public string Path { get; }

    public static ModelFormat Format { get; } = new("CMoETestBlob", "CMOETBLB", Version: 1);

    private protected override IReadOnlyList<InputColumn> InputColumns =>
        [new InputColumn("Features", new VectorDataViewType(NumberDataViewType.Single, WeightedSumTransformer.SampleDimension))];

    private protected override IReadOnlyList<(string Name, DataViewType Type)> OutputColumns => [("Score", NumberDataViewType.Single)];

    private protected override void MapBatch(IReadOnlyList<object[]> inputs, object[][] outputs)
    {
        for (int r = 0; r < inputs.Count; r++) outputs[r][0] = (float)(new FileInfo(Path).Length / (double)(1L << 30));
    }

    // Header: none. Entry "blob.bin": the file's bytes.
    private protected override ModelPayload CreatePayload() => new ModelPayload(Format).AddFile(BlobEntry, Path);

    public static BlobTransformer Load(IHostEnvironment env, ModelPayloadReader payload)
    {
        string path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"cmoe-blob-{Guid.NewGuid():N}.bin");
        payload.ExtractTo(BlobEntry, path);
        return new BlobTransformer(env, path, owned: true);
    }

    public void Dispose()
    {
        if (_owned) File.Delete(Path);
    }
}
