using System.Text;
using CMoE.Modeling.IO;
using static TorchSharp.torch;

namespace CMoE.Tests.IO;

/// <summary>
/// <see cref="GgufWriter"/> on tinyref-llama (the copy vendored in models/, the same files as ../shared's, so nothing skips), read
/// back with the small GGUF reader below: header, metadata, tensor table, Q8_0 values, llama.cpp's q/k permutation.
/// llama.cpp itself reading the file is tests/CMoE.Peer's perplexity mode (docs/benchmarks.md).
/// </summary>
public sealed class GgufWriterTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "cmoe-gguf-test-" + Guid.NewGuid().ToString("N"));

    public GgufWriterTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string Model => TestPaths.EmbeddedModel;

    [Fact]
    public void Q8_0FileHasTheLlamaCppHeaderTensorsAndValues()
    {
        string path = Path.Combine(_dir, "q8.gguf");
        GgufWriter.Write(Model, path, GgufTensorType.Q8_0);
        var g = GgufFile.Read(path);
        var c = CMoE.Modeling.LlamaConfig.Load(Model);

        g.Version.Should().Be(3u);
        g.Meta["general.architecture"].Should().Be("llama");
        g.Meta["general.file_type"].Should().Be(7u);
        g.Meta["llama.context_length"].Should().Be((uint)c.MaxPositionEmbeddings);
        g.Meta["llama.embedding_length"].Should().Be(384u);
        g.Meta["llama.block_count"].Should().Be(8u);
        g.Meta["llama.feed_forward_length"].Should().Be(1024u);
        g.Meta["llama.attention.head_count"].Should().Be(6u);
        g.Meta["llama.attention.head_count_kv"].Should().Be(2u);
        g.Meta["llama.rope.dimension_count"].Should().Be(64u);
        g.Meta["llama.rope.freq_base"].Should().Be((float)c.RopeTheta);
        g.Meta["llama.attention.layer_norm_rms_epsilon"].Should().Be((float)c.RmsNormEps);
        g.Meta["tokenizer.ggml.model"].Should().Be("llama");
        var tokens = (object[])g.Meta["tokenizer.ggml.tokens"];
        tokens.Should().HaveCount(8192);
        tokens[0].Should().Be("<unk>");
        tokens[1].Should().Be("<s>");
        ((object[])g.Meta["tokenizer.ggml.scores"]).Should().HaveCount(8192);
        var types = (object[])g.Meta["tokenizer.ggml.token_type"];
        types[0].Should().Be(2);   // UNKNOWN
        types[1].Should().Be(3);   // CONTROL
        g.Meta["tokenizer.ggml.bos_token_id"].Should().Be(1u);
        g.Meta["tokenizer.ggml.eos_token_id"].Should().Be(2u);

        g.Tensors.Should().HaveCount(1 + 8 * 9 + 2);
        g.Tensors["token_embd.weight"].Should().Be(new GgufTensor([384, 8192], 8, g.Tensors["token_embd.weight"].Offset));
        g.Tensors["blk.0.attn_norm.weight"].Type.Should().Be(0u);
        g.Tensors["blk.7.ffn_down.weight"].Dims.Should().Equal(1024, 384);
        g.Tensors["blk.3.attn_k.weight"].Dims.Should().Equal(384, 128);
        g.Tensors["output.weight"].Type.Should().Be(8u);
        g.Tensors["output_norm.weight"].Dims.Should().Equal(384);
        long end = 0;
        foreach (var (name, t) in g.Tensors.OrderBy(t => t.Value.Offset))
        {
            (t.Offset % GgufWriter.Alignment).Should().Be(0, name);
            t.Offset.Should().Be((end + 31) / 32 * 32, $"{name} follows the previous tensor");
            end = t.Offset + t.Bytes;
        }
        (g.DataStart % 32).Should().Be(0);
        new FileInfo(path).Length.Should().Be((g.DataStart + end + 31) / 32 * 32);

        // Q8_0 values: v (not permuted) and q (permuted) dequantize within half a step of the source. The step is the fp32
        // d = max|x|/127 the quantizer rounds with; the file stores d as fp16, which adds up to 127 x d x 2^-11.
        using var weights = WeightSet.Open(Model);
        float[] v = Read(weights, "model.layers.2.self_attn.v_proj.weight", [128, 384]);
        float[] q = GgufWriter.PermuteQk(Read(weights, "model.layers.2.self_attn.q_proj.weight", [384, 384]), 6, 384, 384);
        CheckQ8(g.Data(path, "blk.2.attn_v.weight"), v);
        CheckQ8(g.Data(path, "blk.2.attn_q.weight"), q);
    }

    [Fact]
    public void F32FileHoldsThePermutedQkRowsExactly()
    {
        string path = Path.Combine(_dir, "f32.gguf");
        GgufWriter.Write(Model, path, GgufTensorType.F32);
        var g = GgufFile.Read(path);
        g.Meta["general.file_type"].Should().Be(0u);
        g.Tensors.Values.Should().OnlyContain(t => t.Type == 0u);
        using var weights = WeightSet.Open(Model);
        foreach (var (hf, gguf, heads, rows) in new[] { ("q_proj", "attn_q", 6, 384), ("k_proj", "attn_k", 2, 128) })
        {
            float[] source = Read(weights, $"model.layers.5.self_attn.{hf}.weight", [rows, 384]);
            float[] written = FloatsOf(g.Data(path, $"blk.5.{gguf}.weight"));
            // llama.cpp's permute as torch does it: view [heads, 2, head_dim/2, cols], swap axes 1 and 2; then undone.
            using var t = tensor(source, [rows, 384]);
            using var permuted = t.view(heads, 2, rows / heads / 2, 384).transpose(1, 2).reshape(rows, 384);
            written.Should().Equal(permuted.data<float>().ToArray(), $"{gguf} is q/k permuted as convert_hf_to_gguf.py does");
            using var back = tensor(written, [rows, 384]).view(heads, rows / heads / 2, 2, 384).transpose(1, 2).reshape(rows, 384);
            back.data<float>().ToArray().Should().Equal(source, "undoing the permutation gives the Hugging Face rows back");
        }
        FloatsOf(g.Data(path, "blk.5.attn_v.weight")).Should().Equal(Read(weights, "model.layers.5.self_attn.v_proj.weight", [128, 384]));
        FloatsOf(g.Data(path, "output_norm.weight")).Should().Equal(Read(weights, "model.norm.weight", [384]));
    }

    private static float[] Read(WeightSet weights, string name, long[] shape)
    {
        using var t = weights.Load(name, ScalarType.Float32, shape);
        return t.data<float>().ToArray();
    }

    private static float[] FloatsOf(byte[] bytes)
    {
        var f = new float[bytes.Length / 4];
        Buffer.BlockCopy(bytes, 0, f, 0, bytes.Length);
        return f;
    }

    private static void CheckQ8(byte[] blocks, float[] source)
    {
        blocks.Length.Should().Be(source.Length / 32 * 34);
        for (int b = 0; b < source.Length / 32; b++)
        {
            float d16 = (float)BitConverter.ToHalf(blocks, b * 34);
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = Math.Max(amax, Math.Abs(source[b * 32 + j]));
            float d = amax / 127;
            Math.Abs(d16 - d).Should().BeLessThanOrEqualTo(d * 1f / 2048 + 1e-12f, "the scale is max|x|/127 in fp16");
            for (int j = 0; j < 32; j++)
            {
                float x = source[b * 32 + j], value = (sbyte)blocks[b * 34 + 2 + j] * d16;
                Math.Abs(value - x).Should().BeLessThanOrEqualTo(d * (0.5f + 127f / 2048) + 1e-7f, $"block {b} value {j}");
            }
        }
    }
}

/// <summary>One tensor's entry in a GGUF tensor table (dims innermost first, GGML type id, offset in the data section).</summary>
internal sealed record GgufTensor(long[] Dims, uint Type, long Offset)
{
    public long Elements => Dims.Aggregate(1L, (a, b) => a * b);
    public long Bytes => Type switch { 0 => Elements * 4, 1 => Elements * 2, 8 => Elements / 32 * 34, _ => throw new NotSupportedException($"GGML type {Type}") };
    public bool Equals(GgufTensor? o) => o is not null && Dims.SequenceEqual(o.Dims) && Type == o.Type && Offset == o.Offset;
    public override int GetHashCode() => HashCode.Combine(Type, Offset);
}

/// <summary>The smallest GGUF v3 reader the tests need (layout: <see cref="GgufWriter"/>'s summary).</summary>
internal sealed class GgufFile
{
    public uint Version { get; private init; }
    public Dictionary<string, object> Meta { get; } = new(StringComparer.Ordinal);
    public Dictionary<string, GgufTensor> Tensors { get; } = new(StringComparer.Ordinal);
    public long DataStart { get; private set; }

    public static GgufFile Read(string path)
    {
        using var r = new BinaryReader(File.OpenRead(path));
        r.ReadUInt32().Should().Be(GgufWriter.Magic, "the file starts with GGUF");
        var g = new GgufFile { Version = r.ReadUInt32() };
        long tensors = r.ReadInt64(), kvs = r.ReadInt64();
        for (long i = 0; i < kvs; i++)
        {
            string key = Str(r);
            g.Meta.Add(key, Value(r, r.ReadUInt32()));
        }
        for (long i = 0; i < tensors; i++)
        {
            string name = Str(r);
            var dims = new long[r.ReadUInt32()];
            for (int k = 0; k < dims.Length; k++) dims[k] = r.ReadInt64();
            g.Tensors.Add(name, new GgufTensor(dims, r.ReadUInt32(), r.ReadInt64()));
        }
        long alignment = g.Meta.TryGetValue("general.alignment", out var a) ? (uint)a : 32;
        g.DataStart = (r.BaseStream.Position + alignment - 1) / alignment * alignment;
        return g;
    }

    public byte[] Data(string path, string tensor)
    {
        var t = Tensors[tensor];
        using var s = File.OpenRead(path);
        s.Position = DataStart + t.Offset;
        var bytes = new byte[t.Bytes];
        s.ReadExactly(bytes);
        return bytes;
    }

    private static string Str(BinaryReader r) => Encoding.UTF8.GetString(r.ReadBytes((int)r.ReadInt64()));

    private static object Value(BinaryReader r, uint type) => type switch
    {
        4 => r.ReadUInt32(),
        5 => r.ReadInt32(),
        6 => r.ReadSingle(),
        7 => r.ReadByte() != 0,
        8 => Str(r),
        9 => Array(r),
        _ => throw new NotSupportedException($"GGUF value type {type}"),
    };

    private static object[] Array(BinaryReader r)
    {
        uint type = r.ReadUInt32();
        var items = new object[r.ReadInt64()];
        for (long i = 0; i < items.Length; i++) items[i] = Value(r, type);
        return items;
    }
}
