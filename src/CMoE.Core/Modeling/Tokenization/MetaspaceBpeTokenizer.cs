using System.Buffers;
using System.Text;
using Microsoft.ML.Tokenizers;

namespace CMoE.Modeling.Tokenization;

/// <summary>Where a metaspace-style tokenizer writes its dummy-prefix "▁" in front of a text segment.</summary>
internal enum MetaspacePrepend
{
    /// <summary>Never (the text is tokenized as it is).</summary>
    Never,

    /// <summary>In front of every non-empty segment, unconditionally (the legacy Llama-2 <c>Prepend</c> normalizer).</summary>
    Always,

    /// <summary>In front of every segment that does not already start with "▁" (HF <c>Metaspace</c>, prepend_scheme "always").</summary>
    AlwaysUnlessPresent,

    /// <summary>Only in front of the segment at offset 0 of the input, unless already there (HF <c>Metaspace</c>, prepend_scheme "first").</summary>
    FirstUnlessPresent,
}

/// <summary>Settings of a SentencePiece-style BPE read from a Hugging Face <c>tokenizer.json</c>.</summary>
internal sealed class MetaspaceBpeSettings
{
    public required Dictionary<string, int> Vocab { get; init; }
    public required IReadOnlyList<(string Left, string Right)> Merges { get; init; }
    public required IReadOnlyList<(string Content, int Id, bool Special)> AddedTokens { get; init; }
    public bool ByteFallback { get; init; }
    public string? UnkToken { get; init; }
    public bool FuseUnk { get; init; }
    public bool IgnoreMerges { get; init; }

    /// <summary>The character spaces become (normally '▁'); null keeps spaces as they are.</summary>
    public char? SpaceReplacement { get; init; }
    public MetaspacePrepend Prepend { get; init; }
    public char PrependChar { get; init; } = '▁';

    /// <summary>Split the segment into words before each replacement character (HF Metaspace split: true).</summary>
    public bool SplitOnReplacement { get; init; }

    /// <summary>Decoding turns this character back into a space (null: no replacement).</summary>
    public char? DecodeReplacement { get; init; }

    /// <summary>How many leading spaces decoding strips from the text (the dummy prefix).</summary>
    public int DecodeStripLeading { get; init; }

    /// <summary>The file the settings came from, for messages.</summary>
    public required string SourcePath { get; init; }
}

/// <summary>
/// SentencePiece-style BPE as a Hugging Face <c>tokenizer.json</c> describes it (Llama-2, TinyLlama, tinyref):
/// spaces become "▁", a dummy-prefix "▁" goes in front, BPE merges apply by rank (lowest first, leftmost on
/// ties), and characters missing from the vocabulary fall back to their UTF-8 bytes as <c>&lt;0xXX&gt;</c>
/// tokens. Microsoft.ML's <see cref="BpeTokenizer"/> has no byte fallback, hence this class.
/// Added tokens (<c>&lt;s&gt;</c>, <c>&lt;/s&gt;</c>, ...) are matched in the raw text first, as HF does.
/// A whole document is one segment: the merge loop is a priority queue over a linked list, O(n log n).
/// </summary>
internal sealed class MetaspaceBpeTokenizer : Tokenizer
{
    private readonly Dictionary<string, int> _vocab;
    private readonly string?[] _idToToken;
    private readonly int[] _bmpToId;                     // char -> id for single-char tokens, -1 when absent
    private readonly Dictionary<long, (int Rank, int Merged)> _merges;
    private readonly int[] _byteIds = new int[256];       // byte -> id of <0xXX>, -1 when absent
    private readonly int[] _idToByte;                     // id -> byte value of <0xXX>, -1 for other tokens
    private readonly (string Content, int Id)[] _added;   // longest first
    private readonly HashSet<int> _specialIds;
    private readonly int _unkId;
    private readonly int _maxTokenChars;
    private readonly MetaspaceBpeSettings _s;

    public MetaspaceBpeTokenizer(MetaspaceBpeSettings settings)
    {
        _s = settings;
        _vocab = new Dictionary<string, int>(settings.Vocab, StringComparer.Ordinal);
        foreach (var (content, id, _) in settings.AddedTokens) _vocab.TryAdd(content, id);

        int size = _vocab.Count == 0 ? 0 : _vocab.Values.Max() + 1;
        _idToToken = new string?[size];
        foreach (var (token, id) in _vocab)
        {
            if (id < 0) throw new CMoEFormatException($"{settings.SourcePath}: token '{token}' has the negative id {id}. Re-download tokenizer.json.");
            _idToToken[id] = token;
            _maxTokenChars = Math.Max(_maxTokenChars, token.Length);
        }

        _bmpToId = new int[char.MaxValue + 1];
        Array.Fill(_bmpToId, -1);
        foreach (var (token, id) in settings.Vocab)
            if (token.Length == 1) _bmpToId[token[0]] = id;

        _idToByte = new int[size];
        Array.Fill(_idToByte, -1);
        Array.Fill(_byteIds, -1);
        for (int b = 0; b < 256; b++)
        {
            if (settings.Vocab.TryGetValue($"<0x{b:X2}>", out int id))
            {
                _byteIds[b] = id;
                _idToByte[id] = b;
            }
        }

        _merges = BpeMerges.Table(settings.Merges, settings.Vocab, settings.SourcePath,
            "re-download tokenizer.json or load tokenizer.model instead (TokenizerFile.SentencePieceModel).");

        _unkId = settings.UnkToken is not null && _vocab.TryGetValue(settings.UnkToken, out int unk) ? unk : -1;
        _added = settings.AddedTokens.Where(a => a.Content.Length > 0)
            .Select(a => (a.Content, a.Id)).OrderByDescending(a => a.Content.Length).ToArray();
        _specialIds = settings.AddedTokens.Where(a => a.Special).Select(a => a.Id).ToHashSet();
    }

    /// <summary>Token string to id over the vocabulary and the added tokens.</summary>
    public IReadOnlyDictionary<string, int> Vocabulary => _vocab;

    /// <summary>One past the largest id.</summary>
    public int VocabSize => _idToToken.Length;

    protected override EncodeResults<EncodedToken> EncodeToTokens(string? text, ReadOnlySpan<char> textSpan, EncodeSettings settings)
    {
        ReadOnlySpan<char> input = text is null ? textSpan : text.AsSpan();
        var ids = new List<int>();
        var offsets = new List<(int Start, int End)>();
        Encode(input, settings.ConsiderNormalization, ids, offsets);
        int count = Math.Min(ids.Count, Math.Max(0, settings.MaxTokenCount));
        var tokens = new List<EncodedToken>(count);
        for (int i = 0; i < count; i++)
            tokens.Add(new EncodedToken(ids[i], _idToToken[ids[i]] ?? "", new Range(offsets[i].Start, offsets[i].End)));
        return new EncodeResults<EncodedToken>
        {
            Tokens = tokens,
            NormalizedText = null,
            CharsConsumed = count == ids.Count ? input.Length : (count == 0 ? 0 : offsets[count - 1].End),
        };
    }

    protected override EncodeResults<int> EncodeToIds(string? text, ReadOnlySpan<char> textSpan, EncodeSettings settings)
    {
        ReadOnlySpan<char> input = text is null ? textSpan : text.AsSpan();
        int max = Math.Max(0, settings.MaxTokenCount);
        var ids = new List<int>();
        List<(int, int)>? offsets = max == int.MaxValue ? null : new List<(int, int)>();
        Encode(input, settings.ConsiderNormalization, ids, offsets);
        if (ids.Count <= max)
            return new EncodeResults<int> { Tokens = ids, NormalizedText = null, CharsConsumed = input.Length };
        int consumed = max == 0 ? 0 : offsets![max - 1].Item2;
        return new EncodeResults<int> { Tokens = ids.GetRange(0, max), NormalizedText = null, CharsConsumed = consumed };
    }

    /// <summary>Decodes ids to text, leaving out special added tokens (BOS, EOS, ...).</summary>
    public override string Decode(IEnumerable<int> ids) => Decode(ids, considerSpecialTokens: false);

    /// <summary>Decodes ids to text; special added tokens are written only when <paramref name="considerSpecialTokens"/>.</summary>
    public string Decode(IEnumerable<int> ids, bool considerSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var bytes = new ArrayBufferWriter<byte>();
        Span<byte> one = stackalloc byte[1];
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)_idToToken.Length || _idToToken[id] is not { } token)
                throw new ArgumentOutOfRangeException(nameof(ids), id, $"Token id {id} is not in this tokenizer's vocabulary (size {VocabSize}).");
            if (!considerSpecialTokens && _specialIds.Contains(id)) continue;
            if (_idToByte[id] >= 0)
            {
                one[0] = (byte)_idToByte[id];
                bytes.Write(one);
                continue;
            }
            if (_s.DecodeReplacement is char rep) token = token.Replace(rep, ' ');
            int n = Encoding.UTF8.GetByteCount(token);
            Encoding.UTF8.GetBytes(token, bytes.GetSpan(n));
            bytes.Advance(n);
        }
        string text = Encoding.UTF8.GetString(bytes.WrittenSpan); // invalid byte runs become U+FFFD
        int strip = 0;
        while (strip < _s.DecodeStripLeading && strip < text.Length && text[strip] == ' ') strip++;
        return text[strip..];
    }

    /// <summary>Decodes into <paramref name="destination"/>; all or nothing (the ids are decoded as one text).</summary>
    public override OperationStatus Decode(IEnumerable<int> ids, Span<char> destination, out int idsConsumed, out int charsWritten)
    {
        var list = ids as IReadOnlyCollection<int> ?? ids.ToList();
        string text = Decode(list);
        if (text.Length > destination.Length)
        {
            idsConsumed = 0;
            charsWritten = 0;
            return OperationStatus.DestinationTooSmall;
        }
        text.AsSpan().CopyTo(destination);
        idsConsumed = list.Count;
        charsWritten = text.Length;
        return OperationStatus.Done;
    }

    /// <summary>Splits on added tokens, then encodes each plain segment.</summary>
    private void Encode(ReadOnlySpan<char> text, bool normalize, List<int> ids, List<(int, int)>? offsets)
    {
        var nextAt = new int[_added.Length];
        Array.Fill(nextAt, -2); // -2: not searched yet, -1: no further occurrence
        int pos = 0;
        while (pos < text.Length)
        {
            int best = -1, bestAt = text.Length;
            for (int k = 0; k < _added.Length; k++)
            {
                if (nextAt[k] == -1) continue;
                if (nextAt[k] < pos)
                {
                    int rel = text[pos..].IndexOf(_added[k].Content.AsSpan(), StringComparison.Ordinal);
                    nextAt[k] = rel < 0 ? -1 : pos + rel;
                    if (rel < 0) continue;
                }
                if (nextAt[k] < bestAt) { bestAt = nextAt[k]; best = k; } // longest first wins ties
            }
            if (bestAt > pos) EncodeSegment(text, pos, bestAt, normalize, ids, offsets);
            if (best < 0) break;
            ids.Add(_added[best].Id);
            offsets?.Add((bestAt, bestAt + _added[best].Content.Length));
            pos = bestAt + _added[best].Content.Length;
        }
    }

    /// <summary>Normalizes text[start..end) (spaces to "▁", dummy prefix) and runs BPE on each word of it.</summary>
    private void EncodeSegment(ReadOnlySpan<char> text, int start, int end, bool normalize, List<int> ids, List<(int, int)>? offsets)
    {
        char? rep = normalize ? _s.SpaceReplacement : null;
        char first = rep is char r0 && text[start] == ' ' ? r0 : text[start];
        bool prepend = normalize && _s.Prepend switch
        {
            MetaspacePrepend.Always => true,
            MetaspacePrepend.AlwaysUnlessPresent => first != _s.PrependChar,
            MetaspacePrepend.FirstUnlessPresent => start == 0 && first != _s.PrependChar,
            _ => false,
        };

        // The normalized segment: chars plus, for each, the source offset it came from.
        int n = end - start + (prepend ? 1 : 0);
        char[] chars = ArrayPool<char>.Shared.Rent(n);
        int[] source = ArrayPool<int>.Shared.Rent(n);
        try
        {
            int k = 0;
            if (prepend) { chars[k] = _s.PrependChar; source[k++] = start; }
            for (int i = start; i < end; i++)
            {
                char c = text[i];
                chars[k] = rep is char r && c == ' ' ? r : c;
                source[k++] = i;
            }

            if (_s.SplitOnReplacement && rep is char split)
            {
                int wordStart = 0;
                for (int i = 1; i <= n; i++)
                {
                    if (i == n || chars[i] == split)
                    {
                        EncodeWord(chars.AsSpan(wordStart, i - wordStart), source.AsSpan(wordStart, i - wordStart), ids, offsets);
                        wordStart = i;
                    }
                }
            }
            else
            {
                EncodeWord(chars.AsSpan(0, n), source.AsSpan(0, n), ids, offsets);
            }
        }
        finally
        {
            ArrayPool<char>.Shared.Return(chars);
            ArrayPool<int>.Shared.Return(source);
        }
    }

    /// <summary>BPE on one word: characters (or their bytes) as symbols, then merges lowest rank first.</summary>
    private void EncodeWord(ReadOnlySpan<char> word, ReadOnlySpan<int> source, List<int> ids, List<(int, int)>? offsets)
    {
        if (word.IsEmpty) return;
        if (_s.IgnoreMerges && word.Length <= _maxTokenChars && _vocab.TryGetValue(word.ToString(), out int whole))
        {
            ids.Add(whole);
            offsets?.Add((source[0], source[^1] + 1));
            return;
        }

        // Symbols: id, source range [start, end), doubly linked.
        var symId = new List<int>(word.Length);
        var symStart = new List<int>(word.Length);
        var symEnd = new List<int>(word.Length);
        Span<byte> utf8 = stackalloc byte[4];
        for (int i = 0; i < word.Length;)
        {
            int len = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            int s = source[i], e = source[i + len - 1] + 1;
            int id = len == 1 ? _bmpToId[word[i]] : (_vocab.TryGetValue(word.Slice(i, 2).ToString(), out int v) ? v : -1);
            if (id >= 0)
            {
                Add(id, s, e);
            }
            else if (_s.ByteFallback && ByteIds(word.Slice(i, len), utf8, out int nb))
            {
                for (int b = 0; b < nb; b++) Add(_byteIds[utf8[b]], s, e);
            }
            else if (_unkId >= 0)
            {
                if (_s.FuseUnk && symId.Count > 0 && symId[^1] == _unkId) symEnd[^1] = e;
                else Add(_unkId, s, e);
            }
            i += len;
        }

        int n = symId.Count;
        if (n == 0) return;
        int[] next = BpeMerges.Apply(symId, symEnd, _merges);

        for (int i = 0; i >= 0; i = next[i])
        {
            ids.Add(symId[i]);
            offsets?.Add((symStart[i], symEnd[i]));
        }

        void Add(int id, int s, int e) { symId.Add(id); symStart.Add(s); symEnd.Add(e); }
    }

    private bool ByteIds(ReadOnlySpan<char> ch, Span<byte> utf8, out int count)
    {
        count = Encoding.UTF8.GetBytes(ch, utf8);
        for (int b = 0; b < count; b++)
            if (_byteIds[utf8[b]] < 0) return false;
        return true;
    }
}
