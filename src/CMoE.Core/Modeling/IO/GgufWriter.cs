using System.Buffers.Binary;
using System.Text;
using CMoE.Modeling.Tokenization;
using static TorchSharp.torch;

namespace CMoE.Modeling.IO;

/// <summary>The GGML tensor types <see cref="GgufWriter"/> writes (values are GGML's type ids).</summary>
public enum GgufTensorType
{
    /// <summary>32-bit floats.</summary>
    F32 = 0,
    /// <summary>IEEE half floats.</summary>
    F16 = 1,
    /// <summary>Blocks of 32 values: one fp16 scale d = max|x|/127, then 32 int8 q = round(x/d) (34 bytes).</summary>
    Q8_0 = 8,
}

/// <summary>
/// Writes a dense Hugging Face folder of any supported family as a GGUF v3 file that llama.cpp loads (the peer benchmark's
/// and the numeric oracle's input; tests/CMoE.Peer). Layout (little-endian; the reader in tests/CMoE.Tests/IO/GgufWriterTests.cs follows it):
/// <c>"GGUF"</c>, u32 version 3, u64 tensor count, u64 metadata count; metadata entries
/// (string key, u32 value type, value; strings are u64 length + UTF-8 bytes, arrays u32 element type + u64 count + elements);
/// tensor infos (string name, u32 n_dims, u64 dims innermost first, u32 GGML type, u64 data offset); zero padding to
/// <see cref="Alignment"/>; then each tensor's data, each starting at a multiple of <see cref="Alignment"/>.
/// Conventions are those of llama.cpp's convert_hf_to_gguf.py: <c>general.architecture</c> and the metadata prefix are the
/// family's (<see cref="Families.ModelFamily.GgufArchitecture"/>: llama, qwen2, qwen3, phi3, gemma2), tensor names
/// <c>token_embd</c>, <c>blk.N.attn_{norm,q,k,v,output}</c>, <c>blk.N.ffn_{norm,gate,up,down}</c>, <c>output_norm</c>,
/// <c>output</c> plus each family's own (<see cref="Families.ModelFamily.GgufLayer"/>: Qwen3's <c>attn_{q,k}_norm</c>, Phi-3's
/// fused <c>attn_qkv</c> and <c>ffn_up</c> = gate | up, Gemma-2's <c>post_attention_norm</c>, <c>post_ffw_norm</c>, norms written
/// as 1 + w, soft-capping and sliding-window metadata); q/k rows permuted from Hugging Face's rotate-half layout to llama.cpp's
/// interleaved pairs for the LLaMA family only (<see cref="PermuteQk"/>);
/// norms and biases stay F32, matrices take the asked type; vocabulary, scores and token types come from
/// <c>tokenizer.model</c> (SentencePiece). The file is written under a temporary name and moved into place.
/// </summary>
public static class GgufWriter
{
    /// <summary>"GGUF" read as a little-endian u32.</summary>
    public const uint Magic = 0x46554747;

    /// <summary>The GGUF version written.</summary>
    public const uint Version = 3;

    /// <summary>Alignment of the data section and of every tensor in it (GGUF's default, also written as general.alignment).</summary>
    public const int Alignment = 32;

    /// <summary>Values per Q8_0 block.</summary>
    public const int Q8BlockSize = 32;

    /// <summary>Bytes per Q8_0 block (fp16 scale + 32 int8).</summary>
    public const int Q8BlockBytes = 2 + Q8BlockSize;

    /// <summary>GGUF metadata value types.</summary>
    internal enum ValueType : uint { UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9 }

    internal sealed record TensorEntry(string Name, long[] Shape, GgufTensorType Type, Func<float[]> Data)
    {
        public long Bytes => Type switch
        {
            GgufTensorType.F32 => Shape.Aggregate(1L, (a, b) => a * b) * 4,
            GgufTensorType.F16 => Shape.Aggregate(1L, (a, b) => a * b) * 2,
            _ => Shape.Aggregate(1L, (a, b) => a * b) / Q8BlockSize * Q8BlockBytes,
        };
    }

    /// <summary>
    /// Writes the dense model of <paramref name="folder"/> (config.json, safetensors weights, tokenizer.model) to
    /// <paramref name="path"/>, weight matrices as <paramref name="matrices"/>.
    /// </summary>
    /// <exception cref="CMoEFormatException">The folder is carved, not LLaMA-shaped, has no tokenizer.model, or a row length is not a multiple of 32 for Q8_0.</exception>
    public static void Write(string folder, string path, GgufTensorType matrices)
    {
        if (ModelFolder.IsCarved(folder))
            throw new CMoEFormatException($"'{folder}' is a carved folder; GGUF export writes dense LLaMA models only. Pass the dense folder it came from.");
        var c = LlamaConfig.Load(folder);
        if (c.RopeType != "default")
            throw new CMoEFormatException($"'{folder}': rope type '{c.RopeType}' is not written to GGUF (only default RoPE). Export a model with default RoPE.");
        string spPath = Path.Combine(folder, TokenizerLoader.SentencePieceFileName);
        if (!File.Exists(spPath))
            throw new CMoEFormatException($"'{folder}' has no {TokenizerLoader.SentencePieceFileName}; the GGUF vocabulary is read from the SentencePiece model. Copy it from the model's repository.");
        var pieces = ReadSentencePieces(spPath);
        var tokenizer = TokenizerLoader.FromFolder(folder);

        using var weights = WeightSet.Open(folder);
        var family = c.Family;
        var tensors = new GgufTensors(weights, folder, matrices, c.NormWeightOffset);
        tensors.Matrix("token_embd.weight", "model.embed_tokens.weight", c.VocabSize, c.HiddenSize);
        for (int i = 0; i < c.NumLayers; i++) family.GgufLayer(tensors, c, i);
        tensors.Norm("output_norm.weight", "model.norm.weight", c.HiddenSize);
        if (!c.TieWordEmbeddings) tensors.Matrix("output.weight", "lm_head.weight", c.VocabSize, c.HiddenSize);   // tied: llama.cpp reuses token_embd

        var meta = new GgufMetadata();
        string arch = family.GgufArchitecture;
        meta.String("general.architecture", arch);
        meta.String("general.name", Path.GetFileName(Path.GetFullPath(folder).TrimEnd(Path.DirectorySeparatorChar)));
        meta.UInt32("general.file_type", matrices switch { GgufTensorType.F32 => 0u, GgufTensorType.F16 => 1u, _ => 7u });
        if (matrices == GgufTensorType.Q8_0) meta.UInt32("general.quantization_version", 2);
        meta.UInt32("general.alignment", Alignment);
        meta.UInt32(arch + ".context_length", (uint)c.MaxPositionEmbeddings);
        meta.UInt32(arch + ".embedding_length", (uint)c.HiddenSize);
        meta.UInt32(arch + ".block_count", (uint)c.NumLayers);
        meta.UInt32(arch + ".feed_forward_length", (uint)c.IntermediateSize);
        meta.UInt32(arch + ".attention.head_count", (uint)c.NumHeads);
        meta.UInt32(arch + ".attention.head_count_kv", (uint)c.NumKeyValueHeads);
        meta.UInt32(arch + ".attention.key_length", (uint)c.HeadDim);
        meta.UInt32(arch + ".attention.value_length", (uint)c.HeadDim);
        meta.Float32(arch + ".rope.freq_base", (float)c.RopeTheta);
        meta.Float32(arch + ".attention.layer_norm_rms_epsilon", (float)c.RmsNormEps);
        meta.UInt32(arch + ".rope.dimension_count", (uint)c.HeadDim);
        meta.UInt32(arch + ".vocab_size", (uint)c.VocabSize);
        family.GgufMetadata(meta, c);
        if (pieces.Count != c.VocabSize)
            throw new CMoEFormatException($"'{spPath}' has {pieces.Count} pieces but config.json's vocab_size is {c.VocabSize}; the tokenizer does not belong to the model.");
        meta.String("tokenizer.ggml.model", "llama");
        meta.StringArray("tokenizer.ggml.tokens", pieces.Select(p => p.Piece).ToList());
        meta.Float32Array("tokenizer.ggml.scores", pieces.Select(p => p.Score).ToList());
        meta.Int32Array("tokenizer.ggml.token_type", pieces.Select(p => p.Type).ToList());
        if (tokenizer.BosId is int bos) meta.UInt32("tokenizer.ggml.bos_token_id", (uint)bos);
        if (tokenizer.EosId is int eos) meta.UInt32("tokenizer.ggml.eos_token_id", (uint)eos);
        int unk = pieces.FindIndex(p => p.Type == 2);
        if (unk >= 0) meta.UInt32("tokenizer.ggml.unknown_token_id", (uint)unk);
        meta.Bool("tokenizer.ggml.add_bos_token", tokenizer.AddBosToken);
        meta.Bool("tokenizer.ggml.add_eos_token", false);

        string tmp = path + ".tmp-" + Environment.ProcessId;
        try
        {
            using (var stream = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            using (var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true))
            {
                w.Write(Magic);
                w.Write(Version);
                w.Write((ulong)tensors.Entries.Count);
                w.Write((ulong)meta.Count);
                w.Write(meta.Bytes);
                long offset = 0;
                foreach (var t in tensors.Entries)
                {
                    WriteString(w, t.Name);
                    w.Write((uint)t.Shape.Length);
                    for (int k = t.Shape.Length - 1; k >= 0; k--) w.Write((ulong)t.Shape[k]);   // GGML order: innermost first
                    w.Write((uint)t.Type);
                    w.Write((ulong)offset);
                    offset = Align(offset + t.Bytes);
                }
                Pad(w);
                foreach (var t in tensors.Entries)
                {
                    w.Write(Encode(t.Data(), t.Type));
                    Pad(w);
                }
            }
            File.Move(tmp, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }

    /// <summary>
    /// llama.cpp's <c>permute</c> of LLaMA q/k rows: the [rows, cols] matrix (cols = 1 for a bias) viewed as
    /// [heads, 2, head_dim/2, cols] with axes 1 and 2 swapped, so each head's rotate-half pairs (j, j + head_dim/2)
    /// become adjacent rows (2j, 2j+1) as llama.cpp's interleaved RoPE expects.
    /// </summary>
    public static float[] PermuteQk(float[] w, int heads, int rows, int cols)
    {
        if (rows % (2 * heads) != 0) throw new ArgumentException($"{rows} rows do not split into {heads} heads of an even size.");
        int headDim = rows / heads, half = headDim / 2;
        var result = new float[w.Length];
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < half; j++)
                    Array.Copy(w, (long)(h * headDim + i * half + j) * cols, result, (long)(h * headDim + j * 2 + i) * cols, cols);
        return result;
    }

    /// <summary>Quantizes <paramref name="x"/> (a multiple of 32 values) to Q8_0 blocks, as ggml's quantize_row_q8_0_ref.</summary>
    public static byte[] QuantizeQ8_0(ReadOnlySpan<float> x)
    {
        if (x.Length % Q8BlockSize != 0) throw new ArgumentException($"Q8_0 needs a multiple of {Q8BlockSize} values (got {x.Length}).");
        var bytes = new byte[x.Length / Q8BlockSize * Q8BlockBytes];
        for (int b = 0; b < x.Length / Q8BlockSize; b++)
        {
            var block = x.Slice(b * Q8BlockSize, Q8BlockSize);
            float amax = 0;
            foreach (float v in block) amax = Math.Max(amax, Math.Abs(v));
            float d = amax / 127f, id = d != 0 ? 1f / d : 0f;
            var dst = bytes.AsSpan(b * Q8BlockBytes, Q8BlockBytes);
            BinaryPrimitives.WriteHalfLittleEndian(dst, (Half)d);
            for (int j = 0; j < Q8BlockSize; j++) dst[2 + j] = (byte)(sbyte)MathF.Round(block[j] * id, MidpointRounding.AwayFromZero);
        }
        return bytes;
    }

    private static byte[] Encode(float[] values, GgufTensorType type)
    {
        switch (type)
        {
            case GgufTensorType.F32:
                var f32 = new byte[values.Length * 4];
                Buffer.BlockCopy(values, 0, f32, 0, f32.Length);   // little-endian host (linux-x64)
                return f32;
            case GgufTensorType.F16:
                var f16 = new byte[values.Length * 2];
                for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteHalfLittleEndian(f16.AsSpan(2 * i), (Half)values[i]);
                return f16;
            default:
                return QuantizeQ8_0(values);
        }
    }

    private static long Align(long offset) => (offset + Alignment - 1) / Alignment * Alignment;

    private static void Pad(BinaryWriter w)
    {
        long pos = w.BaseStream.Position;
        for (long p = pos; p < Align(pos); p++) w.Write((byte)0);
    }

    internal static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    /// <summary>
    /// The pieces of a SentencePiece <c>tokenizer.model</c> (protobuf ModelProto: field 1 = repeated SentencePiece
    /// {1: piece string, 2: score float, 3: type enum, NORMAL = 1 by default}); the types are GGUF's token types.
    /// </summary>
    internal static List<(string Piece, float Score, int Type)> ReadSentencePieces(string path)
    {
        var data = File.ReadAllBytes(path);
        var pieces = new List<(string, float, int)>();
        int pos = 0;
        try
        {
            while (pos < data.Length)
            {
                ulong tag = Varint(data, ref pos);
                if (tag == (1 << 3 | 2))
                {
                    int len = (int)Varint(data, ref pos), end = pos + len;
                    string piece = ""; float score = 0; int type = 1;
                    while (pos < end)
                    {
                        ulong t = Varint(data, ref pos);
                        switch (t)
                        {
                            case 1 << 3 | 2: int n = (int)Varint(data, ref pos); piece = Encoding.UTF8.GetString(data, pos, n); pos += n; break;
                            case 2 << 3 | 5: score = BinaryPrimitives.ReadSingleLittleEndian(data.AsSpan(pos)); pos += 4; break;
                            case 3 << 3 | 0: type = (int)Varint(data, ref pos); break;
                            default: Skip(data, ref pos, t); break;
                        }
                    }
                    pieces.Add((piece, score, type));
                }
                else Skip(data, ref pos, tag);
            }
        }
        catch (Exception e) when (e is ArgumentException or IndexOutOfRangeException)
        {
            throw new CMoEFormatException($"'{path}' is not a valid SentencePiece model ({e.Message}). Re-download tokenizer.model.", e);
        }
        if (pieces.Count == 0) throw new CMoEFormatException($"'{path}' holds no SentencePiece pieces. Re-download tokenizer.model.");
        return pieces;
    }

    private static ulong Varint(byte[] data, ref int pos)
    {
        ulong v = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            byte b = data[pos++];
            v |= (ulong)(b & 0x7f) << shift;
            if ((b & 0x80) == 0) return v;
        }
        throw new ArgumentException("varint longer than 10 bytes");
    }

    private static void Skip(byte[] data, ref int pos, ulong tag)
    {
        switch (tag & 7)
        {
            case 0: Varint(data, ref pos); break;
            case 1: pos += 8; break;
            case 2: int length = (int)Varint(data, ref pos); pos += length; break;   // not pos += Varint(..): that reads pos before the call moves it
            case 5: pos += 4; break;
            default: throw new ArgumentException($"unsupported protobuf wire type {tag & 7}");
        }
        if (pos > data.Length) throw new ArgumentException("field runs past the end");
    }
}

/// <summary>Metadata entries, serialized as they are added.</summary>
internal sealed class GgufMetadata
{
    private readonly MemoryStream _stream = new();
    private readonly BinaryWriter _w;
    public GgufMetadata() => _w = new BinaryWriter(_stream, Encoding.UTF8);
    public int Count { get; private set; }
    public byte[] Bytes { get { _w.Flush(); return _stream.ToArray(); } }

    private void Key(string key, GgufWriter.ValueType type)
    {
        GgufWriter.WriteString(_w, key);
        _w.Write((uint)type);
        Count++;
    }
    public void String(string key, string v) { Key(key, GgufWriter.ValueType.String); GgufWriter.WriteString(_w, v); }
    public void UInt32(string key, uint v) { Key(key, GgufWriter.ValueType.UInt32); _w.Write(v); }
    public void Float32(string key, float v) { Key(key, GgufWriter.ValueType.Float32); _w.Write(v); }
    public void Bool(string key, bool v) { Key(key, GgufWriter.ValueType.Bool); _w.Write((byte)(v ? 1 : 0)); }
    private void ArrayHeader(string key, GgufWriter.ValueType element, int count)
    {
        Key(key, GgufWriter.ValueType.Array);
        _w.Write((uint)element);
        _w.Write((ulong)count);
    }
    public void StringArray(string key, IReadOnlyList<string> v) { ArrayHeader(key, GgufWriter.ValueType.String, v.Count); foreach (var s in v) GgufWriter.WriteString(_w, s); }
    public void Float32Array(string key, IReadOnlyList<float> v) { ArrayHeader(key, GgufWriter.ValueType.Float32, v.Count); foreach (var x in v) _w.Write(x); }
    public void Int32Array(string key, IReadOnlyList<int> v) { ArrayHeader(key, GgufWriter.ValueType.Int32, v.Count); foreach (var x in v) _w.Write(x); }
}

/// <summary>
/// The tensors of a GGUF file being written, read lazily from the Hugging Face folder's weights (a family's
/// <see cref="Families.ModelFamily.GgufLayer"/> adds its layers' tensors through these helpers).
/// </summary>
internal sealed class GgufTensors(WeightSet weights, string folder, GgufTensorType matrices, double normOffset)
{
    /// <summary>The tensors in file order.</summary>
    public List<GgufWriter.TensorEntry> Entries { get; } = [];

    private float[] Read(string name, long[] shape)
    {
        using var t = weights.Load(name, ScalarType.Float32, shape);
        return t.contiguous().data<float>().ToArray();
    }

    private void CheckRows(string hf, long cols)
    {
        if (matrices == GgufTensorType.Q8_0 && cols % GgufWriter.Q8BlockSize != 0)
            throw new CMoEFormatException($"'{folder}': '{hf}' has rows of {cols} values, not a multiple of {GgufWriter.Q8BlockSize}; Q8_0 cannot hold it. Write F32 or F16.");
    }

    /// <summary>A weight matrix [rows, cols] in the asked type; q/k rows permuted for <paramref name="permuteHeads"/> heads when positive.</summary>
    public void Matrix(string gguf, string hf, long rows, long cols, int permuteHeads = 0)
    {
        CheckRows(hf, cols);
        Entries.Add(new(gguf, [rows, cols], matrices, () =>
            permuteHeads > 0 ? GgufWriter.PermuteQk(Read(hf, [rows, cols]), permuteHeads, (int)rows, (int)cols) : Read(hf, [rows, cols])));
    }

    /// <summary>Several of our matrices stacked by rows into one tensor (Phi-3's attn_qkv, ffn_up = gate | up).</summary>
    public void Fused(string gguf, IReadOnlyList<(string Hf, long Rows)> parts, long cols)
    {
        foreach (var (hf, _) in parts) CheckRows(hf, cols);
        Entries.Add(new(gguf, [parts.Sum(p => p.Rows), cols], matrices, () => parts.SelectMany(p => Read(p.Hf, [p.Rows, cols])).ToArray()));
    }

    /// <summary>A vector (a bias) in F32; permuted like its q/k matrix when <paramref name="permuteHeads"/> is positive.</summary>
    public void Vector(string gguf, string hf, long n, int permuteHeads = 0) =>
        Entries.Add(new(gguf, [n], GgufTensorType.F32, () =>
            permuteHeads > 0 ? GgufWriter.PermuteQk(Read(hf, [n]), permuteHeads, (int)n, 1) : Read(hf, [n])));

    /// <summary>An RMSNorm weight in F32, with the model's norm offset added (Gemma's converter writes 1 + w).</summary>
    public void Norm(string gguf, string hf, long n) =>
        Entries.Add(new(gguf, [n], GgufTensorType.F32, () => Read(hf, [n]).Select(v => (float)(v + normOffset)).ToArray()));
}
