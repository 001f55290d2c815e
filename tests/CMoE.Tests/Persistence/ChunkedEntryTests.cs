using System.Diagnostics;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using CMoE.MLNet;
using CMoE.MLNet.Persistence;
using CMoE.Modeling.IO;
using CMoE.Tests.MLNet;
using CMoE.Tests.Modeling;
using Microsoft.ML;
using Microsoft.ML.Data;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace CMoE.Tests.Persistence;

/// <summary>
/// Payload entries cut into parts (container layout 2) and data over 2 GB: a chunked model zip scores identically after a
/// reload, an unchunked one is still layout 1, and (with CMOE_LARGE_TESTS=1, where disk and memory allow) a 2.2 GB tensor
/// and a 2.2 GB zip entry round-trip.
/// </summary>
public sealed class ChunkedEntryTests(ITestOutputHelper output) : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>Our body in <c>dir/Model.key</c>: the layout and the table (name, length, part lengths).</summary>
    internal static (ushort Layout, List<(string Name, long Length, long[] Parts)> Entries) ReadTable(string zip, string dir = "TransformerChain")
    {
        using var archive = ZipFile.OpenRead(zip);
        var key = archive.Entries.Single(e => e.FullName.Replace('\\', '/') == $"{dir}/Model.key");
        using var m = new MemoryStream();
        using (var s = key.Open()) s.CopyTo(m);
        m.Position = 256;                                             // ML.NET's model header
        using var r = new BinaryReader(m, Encoding.UTF8);
        r.ReadUInt32().Should().Be(ModelPayload.Magic);
        ushort layout = r.ReadUInt16();
        r.ReadString();
        r.ReadUInt32();
        r.ReadBytes(r.ReadInt32());
        int count = r.ReadInt32();
        var entries = new List<(string, long, long[])>();
        for (int i = 0; i < count; i++)
        {
            string name = r.ReadString();
            long length = r.ReadInt64();
            long[] parts = layout >= 2 ? Enumerable.Range(0, r.ReadInt32()).Select(_ => r.ReadInt64()).ToArray() : [];
            entries.Add((name, length, parts));
        }
        return (layout, entries);
    }

    private static string[] ZipNames(string zip)
    {
        using var archive = ZipFile.OpenRead(zip);
        return archive.Entries.Select(e => e.FullName.Replace('\\', '/')).ToArray();
    }

    private static float[] LogLikelihoods(ITransformer model, IDataView data) => model.Transform(data).GetColumn<float>("LogLikelihood").ToArray();

    private static float[][] Embeddings(ITransformer model, IDataView data) => model.Transform(data).GetColumn<float[]>("Embedding").ToArray();

    [Fact]
    public void AChunkedLanguageModelZipScoresIdenticallyAfterReload()
    {
        TorchTestSetup.Pin();
        var ml = new MLContext(seed: 0);
        var rows = ml.Data.LoadFromEnumerable(new[] { "The state of the union is strong.", "We must balance the budget." }
            .Select(t => new LanguageModelWorkoutTests.TextRow { Text = t }));
        using var scorer = ml.Transforms.ScoreWithLanguageModel(TestPaths.EmbeddedModel, maxTokens: 32).Fit(rows);
        var expected = (LogLikelihoods(scorer, rows), Embeddings(scorer, rows));
        string zip = _dir["chunked.zip"];
        const long chunk = (3 << 20) + 17;                         // parts of 3 MiB + 17 bytes, the last one shorter
        using (ModelPayload.UseChunkBytes(chunk)) ml.Model.Save(scorer, rows.Schema, zip);

        var (layout, entries) = ReadTable(zip);
        layout.Should().Be(2);
        var shard = entries.Single(e => e.Name == "lm-model-00001-of-00004.safetensors");
        shard.Parts.Should().HaveCountGreaterThan(1).And.OnlyContain(p => p <= chunk);
        shard.Parts.Sum().Should().Be(shard.Length);
        shard.Length.Should().Be(new FileInfo(Path.Combine(TestPaths.EmbeddedModel, "model-00001-of-00004.safetensors")).Length);
        var names = ZipNames(zip);
        names.Should().Contain("TransformerChain/lm-model-00001-of-00004.safetensors.part0000").And.NotContain("TransformerChain/lm-model-00001-of-00004.safetensors");
        entries.Single(e => e.Name == "lm-config.json").Parts.Should().BeEmpty("an entry within the chunk size is stored whole");

        using var loaded = (LanguageModelTransformer)new MLContext(seed: 1).LoadCMoEModel(zip, out _);
        LogLikelihoods(loaded, rows).Should().Equal(expected.Item1);
        Embeddings(loaded, rows).Zip(expected.Item2).Should().OnlyContain(p => p.First.SequenceEqual(p.Second));
    }

    [Fact]
    public void AnUnchunkedZipIsLayout1AsOlderBuildsWroteAndAChunkedEntryReadsAsOneStream()
    {
        var ml = new MLContext(seed: 0);
        var weights = WeightedSumTransformer.RandomWeights(1000, seed: 3);
        var model = new WeightedSumTransformer(ml, weights, WeightedSumTransformer.SampleDimension);
        var rows = ml.Data.LoadFromEnumerable(new[] { new WeightedSumInput { Features = Enumerable.Range(0, 8).Select(i => i * 0.5f).ToArray() } });
        string plain = _dir["plain.zip"], chunked = _dir["chunked.zip"];
        ml.Model.Save(model, rows.Schema, plain);
        using (ModelPayload.UseChunkBytes(999)) ml.Model.Save(model, rows.Schema, chunked);

        var (layout1, table1) = ReadTable(plain);
        layout1.Should().Be(1, "a payload without parts keeps layout 1, which builds before layout 2 read");
        table1.Should().ContainSingle().Which.Should().Be(("weights.f32", 4000L, Array.Empty<long>()));
        var (layout2, table2) = ReadTable(chunked);
        layout2.Should().Be(2);
        table2.Single().Parts.Should().Equal(999, 999, 999, 999, 4);
        ZipNames(chunked).Where(n => n.Contains("weights.f32")).Should().Equal(Enumerable.Range(0, 5).Select(i => $"TransformerChain/weights.f32.part{i:D4}"));

        foreach (var zip in new[] { plain, chunked })
        {
            var ml2 = new MLContext(seed: 0);
            MlNetBridge.RegisterLoader<WeightedSumTransformer>(ml2);
            ml2.Model.Load(zip, out _).Should().BeOfType<WeightedSumTransformer>().Which.Weights.Should().Equal(weights);
        }
    }

    /// <summary>Fills <paramref name="t"/>'s memory (uint8, any size) with a pattern that differs per MiB block.</summary>
    private static void Fill(Tensor flat)
    {
        const int block = 1 << 20;
        for (long start = 0; start < flat.shape[0]; start += block)
        {
            using var part = flat.narrow(0, start, Math.Min(block, flat.shape[0] - start));
            var span = part.bytes;
            byte tag = (byte)((uint)(start / block) * 2654435761u >> 24);
            for (int j = 0; j < span.Length; j++) span[j] = (byte)(j % 251 ^ tag);
        }
    }

    [LargeFact(diskGb: 6, memoryGb: 6)]
    public void ATensorOver2GBRoundTripsThroughSafetensors()
    {
        var clock = Stopwatch.StartNew();
        const long n = 2_200_000_000;                                // uint8: 2.2 GB in one tensor
        string path = _dir["big.safetensors"];
        using (var big = empty([n], ScalarType.Byte))
        {
            Fill(big);
            using var small = empty([3], ScalarType.Float32);
            SafeTensorsWriter.Write(path, [new("small", small.zero_()), new("big", big)]);
        }
        output.WriteLine($"written in {clock.Elapsed.TotalSeconds:F1} s");
        new FileInfo(path).Length.Should().BeGreaterThan(n + 12);
        using var file = SafeTensorsFile.Open(path);
        file.Tensors["big"].End.Should().Be(12 + n);
        using var read = file.Load("big");
        read.shape.Should().Equal(n);
        using var expected = empty([n], ScalarType.Byte);
        Fill(expected);
        foreach (long at in new[] { 0L, (1L << 31) - 5_000, n - 70_000 })     // before, across and after the 2 GiB mark
        {
            using var a = read.narrow(0, at, 65_536);
            using var b = expected.narrow(0, at, 65_536);
            SHA256.HashData(a.bytes).Should().Equal(SHA256.HashData(b.bytes), $"the slice at {at} is read back as written");
        }
        for (long start = 0; start < n; start += 1 << 26)
        {
            using var a = read.narrow(0, start, Math.Min(1 << 26, n - start));
            using var b = expected.narrow(0, start, Math.Min(1 << 26, n - start));
            a.bytes.SequenceEqual(b.bytes).Should().BeTrue($"bytes from {start} match");
        }
        output.WriteLine($"round trip in {clock.Elapsed.TotalSeconds:F1} s");
    }

    [LargeFact(diskGb: 10, memoryGb: 2)]
    public void AZipEntryOver2GBRoundTripsInParts()
    {
        var clock = Stopwatch.StartNew();
        const long n = 2_200_000_000;
        string blob = _dir["blob.bin"];
        using (var f = new FileStream(blob, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
        using (var buffer = empty([1 << 20], ScalarType.Byte))
        {
            for (long start = 0; start < n; start += 1 << 20)
            {
                int len = (int)Math.Min(1 << 20, n - start);
                var span = buffer.bytes[..len];
                byte tag = (byte)((uint)(start >> 20) * 2654435761u >> 24);
                for (int j = 0; j < len; j++) span[j] = (byte)(j % 251 ^ tag);
                f.Write(span);
            }
        }
        byte[] hash;
        using (var f = File.OpenRead(blob)) hash = SHA256.HashData(f);
        var ml = new MLContext(seed: 0);
        var rows = ml.Data.LoadFromEnumerable(new[] { new WeightedSumInput { Features = new float[8] } });
        string zip = _dir["blob.zip"];
        ml.Model.Save(new BlobTransformer(ml, blob), rows.Schema, zip);             // the default 1 GiB parts
        output.WriteLine($"saved in {clock.Elapsed.TotalSeconds:F1} s, zip {new FileInfo(zip).Length / 1e6:F0} MB");
        var (layout, entries) = ReadTable(zip);
        layout.Should().Be(2);
        entries.Single().Parts.Should().Equal(1L << 30, 1L << 30, n - (2L << 30));
        File.Delete(blob);

        var ml2 = new MLContext(seed: 0);
        MlNetBridge.RegisterLoader<BlobTransformer>(ml2);
        using var loaded = (BlobTransformer)ml2.Model.Load(zip, out _);
        new FileInfo(loaded.Path).Length.Should().Be(n);
        using (var f = File.OpenRead(loaded.Path)) SHA256.HashData(f).Should().Equal(hash);
        loaded.Transform(rows).GetColumn<float>("Score").Single().Should().BeApproximately(n / (float)(1L << 30), 1e-4f);
        output.WriteLine($"round trip in {clock.Elapsed.TotalSeconds:F1} s");
    }
}
