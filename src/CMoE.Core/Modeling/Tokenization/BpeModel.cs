using System.Text;
using System.Text.Json;

namespace CMoE.Modeling.Tokenization;

/// <summary>
/// The tokenizer.json <c>model</c> of type BPE, as Hugging Face's <c>BPE::merge_word</c> runs it on one word: each code
/// point is its vocabulary entry; one missing from the vocabulary becomes its UTF-8 bytes as <c>&lt;0xXX&gt;</c> tokens
/// (<c>byte_fallback</c>, when every byte has one), else <c>unk_token</c> (consecutive ones fused into one with
/// <c>fuse_unk</c>), else nothing; then merges apply by rank (<see cref="BpeMerges"/>). With <c>ignore_merges</c> a word that
/// is itself a vocabulary entry is that token. Only <c>model.vocab</c> is looked up here; added tokens are matched before.
/// </summary>
internal sealed class BpeModel
{
    private readonly Dictionary<string, int> _vocab;
    private readonly int[] _bmpToId;                      // char -> id of its one-char token, -1 when absent
    private readonly int[] _byteIds = new int[256];       // byte -> id of <0xXX>, -1 when absent
    private readonly Dictionary<long, (int Rank, int Merged)> _merges;
    private readonly int _unkId;
    private readonly bool _byteFallback, _fuseUnk, _ignoreMerges;

    private BpeModel(Dictionary<string, int> vocab, List<(string, string)> merges, string? unk, bool byteFallback, bool fuseUnk,
        bool ignoreMerges, string path)
    {
        _vocab = vocab;
        _bmpToId = new int[char.MaxValue + 1];
        Array.Fill(_bmpToId, -1);
        foreach (var (token, id) in vocab)
            if (token.Length == 1) _bmpToId[token[0]] = id;
        for (int b = 0; b < 256; b++) _byteIds[b] = vocab.TryGetValue($"<0x{b:X2}>", out int id) ? id : -1;
        _merges = BpeMerges.Table(merges, vocab, path, "re-download tokenizer.json from the model's Hugging Face repository.");
        _unkId = unk is not null && vocab.TryGetValue(unk, out int u) ? u : -1;
        _byteFallback = byteFallback;
        _fuseUnk = fuseUnk;
        _ignoreMerges = ignoreMerges;
    }

    /// <summary>Token string to id (<c>model.vocab</c>).</summary>
    public IReadOnlyDictionary<string, int> Vocab => _vocab;

    /// <summary>Reads the <c>model</c> element.</summary>
    /// <exception cref="CMoEFormatException">Not BPE, WordPiece-like, or malformed; the message names the fix.</exception>
    public static BpeModel Read(JsonElement model, string path)
    {
        string type = HfJson.String(model, "type") ?? "BPE";
        if (type != "BPE")
        {
            throw new CMoEFormatException(
                $"{path}: tokenizer model type '{type}' is not supported; only BPE (SentencePiece-style with byte fallback, " +
                "or byte-level) is read from tokenizer.json. Put the model's tokenizer.model (SentencePiece) in the folder and " +
                "load it with TokenizerFile.SentencePieceModel.");
        }
        if (HfJson.String(model, "continuing_subword_prefix") is { Length: > 0 } || HfJson.String(model, "end_of_word_suffix") is { Length: > 0 })
            throw HfJson.Bad(path, "uses continuing_subword_prefix/end_of_word_suffix (a WordPiece-like BPE), which is not supported; use tokenizer.model");
        if (model.TryGetProperty("dropout", out var d) && d.ValueKind == JsonValueKind.Number && d.GetDouble() > 0)
            throw HfJson.Unsupported(path, "model", "BPE with dropout");
        return new BpeModel(ReadVocab(path, model), ReadMerges(path, model), HfJson.String(model, "unk_token"),
            HfJson.Bool(model, "byte_fallback"), HfJson.Bool(model, "fuse_unk"), HfJson.Bool(model, "ignore_merges"), path);
    }

    /// <summary>Adds the tokens of <paramref name="word"/>: (id, char range in the word).</summary>
    public void Tokenize(string word, List<(int Id, int Start, int End)> tokens)
    {
        if (word.Length == 0) return;
        if (_ignoreMerges && _vocab.TryGetValue(word, out int whole))
        {
            tokens.Add((whole, 0, word.Length));
            return;
        }

        var symId = new List<int>(word.Length);
        var symStart = new List<int>(word.Length);
        var symEnd = new List<int>(word.Length);
        Span<byte> utf8 = stackalloc byte[4];
        (int Start, int End)? unk = null; // a pending unk, as merge_word keeps it
        for (int i = 0; i < word.Length;)
        {
            int len = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            int id = len == 1 ? _bmpToId[word[i]] : (_vocab.TryGetValue(word.Substring(i, 2), out int v) ? v : -1);
            if (id >= 0)
            {
                if (unk is { } u) { Add(_unkId, u.Start, u.End); unk = null; }
                Add(id, i, i + len);
            }
            else if (_byteFallback && ByteIds(word.AsSpan(i, len), utf8, out int nb))
            {
                for (int b = 0; b < nb; b++) Add(_byteIds[utf8[b]], i, i + len);
            }
            else if (_unkId >= 0)
            {
                if (unk is { } u && _fuseUnk) unk = (u.Start, i + len);
                else
                {
                    if (unk is { } p) Add(_unkId, p.Start, p.End);
                    unk = (i, i + len);
                }
            }
            i += len;
        }
        if (unk is { } last) Add(_unkId, last.Start, last.End);
        if (symId.Count == 0) return;

        int[] next = BpeMerges.Apply(symId, symEnd, _merges);
        for (int i = 0; i >= 0; i = next[i]) tokens.Add((symId[i], symStart[i], symEnd[i]));

        void Add(int id, int s, int e) { symId.Add(id); symStart.Add(s); symEnd.Add(e); }
    }

    private bool ByteIds(ReadOnlySpan<char> ch, Span<byte> utf8, out int count)
    {
        count = Encoding.UTF8.GetBytes(ch, utf8);
        for (int b = 0; b < count; b++)
            if (_byteIds[utf8[b]] < 0) return false;
        return true;
    }

    private static Dictionary<string, int> ReadVocab(string path, JsonElement model)
    {
        if (!model.TryGetProperty("vocab", out var v) || v.ValueKind != JsonValueKind.Object)
            throw HfJson.Bad(path, "has no \"model.vocab\" object (token -> id)");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var kv in v.EnumerateObject())
        {
            if (kv.Value.ValueKind != JsonValueKind.Number || !kv.Value.TryGetInt32(out int id) || id < 0)
                throw HfJson.Bad(path, $"has a non-integer or negative id for token '{kv.Name}' in model.vocab");
            vocab[kv.Name] = id;
        }
        return vocab;
    }

    private static List<(string, string)> ReadMerges(string path, JsonElement model)
    {
        var merges = new List<(string, string)>();
        if (!model.TryGetProperty("merges", out var m) || m.ValueKind == JsonValueKind.Null) return merges;
        if (m.ValueKind != JsonValueKind.Array) throw HfJson.Bad(path, "has a \"model.merges\" that is not an array");
        foreach (var e in m.EnumerateArray())
        {
            if (e.ValueKind == JsonValueKind.String)
            {
                string s = e.GetString()!;
                int space = s.IndexOf(' ', 1);
                if (space < 0 || space == s.Length - 1 || s.IndexOf(' ', space + 1) >= 0)
                    throw HfJson.Bad(path, $"has the merge \"{s}\", which is not two tokens separated by one space");
                merges.Add((s[..space], s[(space + 1)..]));
            }
            else if (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() == 2
                     && e[0].ValueKind == JsonValueKind.String && e[1].ValueKind == JsonValueKind.String)
            {
                merges.Add((e[0].GetString()!, e[1].GetString()!));
            }
            else
            {
                throw HfJson.Bad(path, $"has a merge that is neither \"a b\" nor [\"a\", \"b\"]: {e.GetRawText()}");
            }
        }
        return merges;
    }
}
