using System.Buffers;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace CMoE.Modeling.Tokenization;

/// <summary>Settings of a byte-level BPE read from a Hugging Face <c>tokenizer.json</c>.</summary>
internal sealed class ByteLevelBpeSettings
{
    public required Dictionary<string, int> Vocab { get; init; }
    public required IReadOnlyList<(string Left, string Right)> Merges { get; init; }
    public required IReadOnlyList<(string Content, int Id, bool Special)> AddedTokens { get; init; }

    /// <summary>The pre-tokenizer split (already through <see cref="CodePointRegex"/>); null: the whole segment is one word.</summary>
    public Regex? Split { get; init; }

    /// <summary>Unicode normalization of each segment between added tokens (the NFC of Qwen2), or none.</summary>
    public NormalizationForm? Normalization { get; init; }

    /// <summary>HF ByteLevel <c>add_prefix_space</c>: a space in front of a segment that does not start with one.</summary>
    public bool AddPrefixSpace { get; init; }

    /// <summary>HF BPE <c>ignore_merges</c> (Llama-3): a word that is itself a vocabulary entry is that token, unmerged.</summary>
    public bool IgnoreMerges { get; init; }
    public string? UnkToken { get; init; }

    /// <summary>The file the settings came from, for messages.</summary>
    public required string SourcePath { get; init; }
}

/// <summary>
/// Byte-level BPE as Hugging Face <c>tokenizers</c> runs it (GPT-2, Llama-3, Qwen2): added tokens are matched in the
/// raw text first; each segment between them is normalized, split into words by the pre-tokenizer regex on whole
/// code points (<see cref="CodePointRegex"/>), each word's UTF-8 bytes become <see cref="ByteLevelAlphabet"/>
/// characters, and BPE merges apply by rank (lowest first, leftmost on ties) unless <c>ignore_merges</c> finds the
/// whole word in the vocabulary. Decoding maps the characters back to bytes (invalid UTF-8 becomes U+FFFD).
/// </summary>
internal sealed class ByteLevelBpeTokenizer : Tokenizer
{
    private readonly Dictionary<string, int> _vocab;
    private readonly string?[] _idToToken;
    private readonly int[] _byteToId = new int[256];      // byte -> id of its one-character token, -1 when absent
    private readonly Dictionary<long, (int Rank, int Merged)> _merges;
    private readonly (string Content, int Id)[] _added;   // longest first
    private readonly HashSet<int> _addedIds;
    private readonly HashSet<int> _specialIds;
    private readonly int _unkId;
    private readonly ByteLevelBpeSettings _s;

    public ByteLevelBpeTokenizer(ByteLevelBpeSettings settings)
    {
        _s = settings;
        _vocab = new Dictionary<string, int>(settings.Vocab, StringComparer.Ordinal);
        foreach (var (content, id, _) in settings.AddedTokens) _vocab.TryAdd(content, id);
        int size = _vocab.Count == 0 ? 0 : _vocab.Values.Max() + 1;
        _idToToken = new string?[size];
        foreach (var (token, id) in settings.Vocab) _idToToken[id] = token;
        foreach (var (content, id, _) in settings.AddedTokens) _idToToken[id] = content;

        for (int b = 0; b < 256; b++)
            _byteToId[b] = settings.Vocab.TryGetValue(ByteLevelAlphabet.ByteToChar[b].ToString(), out int id) ? id : -1;

        _merges = BpeMerges.Table(settings.Merges, settings.Vocab, settings.SourcePath,
            "re-download tokenizer.json from the model's Hugging Face repository.");

        _unkId = settings.UnkToken is not null && _vocab.TryGetValue(settings.UnkToken, out int unk) ? unk : -1;
        _added = settings.AddedTokens.Where(a => a.Content.Length > 0)
            .Select(a => (a.Content, a.Id)).OrderByDescending(a => a.Content.Length).ToArray();
        _addedIds = settings.AddedTokens.Select(a => a.Id).ToHashSet();
        _specialIds = settings.AddedTokens.Where(a => a.Special).Select(a => a.Id).ToHashSet();
    }

    /// <summary>Token string to id over the vocabulary and the added tokens.</summary>
    public IReadOnlyDictionary<string, int> Vocabulary => _vocab;

    protected override EncodeResults<EncodedToken> EncodeToTokens(string? text, ReadOnlySpan<char> textSpan, EncodeSettings settings)
    {
        string input = text ?? textSpan.ToString();
        var ids = new List<int>();
        var offsets = new List<(int Start, int End)>();
        Encode(input, settings.ConsiderNormalization, settings.ConsiderPreTokenization, ids, offsets);
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
        string input = text ?? textSpan.ToString();
        int max = Math.Max(0, settings.MaxTokenCount);
        var ids = new List<int>();
        var offsets = new List<(int, int)>();
        Encode(input, settings.ConsiderNormalization, settings.ConsiderPreTokenization, ids, offsets);
        if (ids.Count <= max)
            return new EncodeResults<int> { Tokens = ids, NormalizedText = null, CharsConsumed = input.Length };
        int consumed = max == 0 ? 0 : offsets[max - 1].Item2;
        return new EncodeResults<int> { Tokens = ids.GetRange(0, max), NormalizedText = null, CharsConsumed = consumed };
    }

    /// <summary>Decodes ids to text, leaving out special added tokens (BOS, EOS, ...).</summary>
    public override string Decode(IEnumerable<int> ids) => Decode(ids, considerSpecialTokens: false);

    /// <summary>Decodes ids to text; special added tokens are written only when <paramref name="considerSpecialTokens"/>.</summary>
    public string Decode(IEnumerable<int> ids, bool considerSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var text = new StringBuilder();
        var bytes = new ArrayBufferWriter<byte>();
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)_idToToken.Length || _idToToken[id] is not { } token)
                throw new ArgumentOutOfRangeException(nameof(ids), id, $"Token id {id} is not in this tokenizer's vocabulary (size {_idToToken.Length}).");
            if (_addedIds.Contains(id))
            {
                // Added tokens are text as they are, not byte-level characters.
                if (!considerSpecialTokens && _specialIds.Contains(id)) continue;
                Flush();
                text.Append(token);
                continue;
            }
            // As HF's ByteLevel decoder: each character's byte, or, when a character is outside the table, the token's own UTF-8.
            bool mapped = true;
            foreach (char c in token) mapped &= c < ByteLevelAlphabet.CharToByte.Length && ByteLevelAlphabet.CharToByte[c] >= 0;
            if (!mapped)
            {
                int n = Encoding.UTF8.GetByteCount(token);
                Encoding.UTF8.GetBytes(token, bytes.GetSpan(n));
                bytes.Advance(n);
                continue;
            }
            foreach (char c in token)
            {
                bytes.GetSpan(1)[0] = (byte)ByteLevelAlphabet.CharToByte[c];
                bytes.Advance(1);
            }
        }
        Flush();
        return text.ToString();

        void Flush()
        {
            text.Append(Encoding.UTF8.GetString(bytes.WrittenSpan)); // invalid byte runs become U+FFFD
            bytes.Clear();
        }
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
    private void Encode(string text, bool normalize, bool preTokenize, List<int> ids, List<(int, int)> offsets)
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
                    int rel = text.AsSpan(pos).IndexOf(_added[k].Content.AsSpan(), StringComparison.Ordinal);
                    nextAt[k] = rel < 0 ? -1 : pos + rel;
                    if (rel < 0) continue;
                }
                if (nextAt[k] < bestAt) { bestAt = nextAt[k]; best = k; } // longest first wins ties
            }
            if (bestAt > pos) EncodeSegment(text, pos, bestAt, normalize, preTokenize, ids, offsets);
            if (best < 0) break;
            ids.Add(_added[best].Id);
            offsets.Add((bestAt, bestAt + _added[best].Content.Length));
            pos = bestAt + _added[best].Content.Length;
        }
    }

    /// <summary>
    /// Normalizes text[start..end), splits it into words (HF Split "Isolated": every match is a word, and so is every
    /// gap between matches) and runs BPE on each. Offsets are exact when normalization leaves the segment as it is,
    /// else every token of the segment gets the segment's range.
    /// </summary>
    private void EncodeSegment(string text, int start, int end, bool normalize, bool preTokenize, List<int> ids, List<(int, int)> offsets)
    {
        string raw = text[start..end];
        string segment = ReplaceLoneSurrogates(raw); // a Rust string cannot hold them; HF sees U+FFFD
        if (normalize && _s.Normalization is { } form) segment = segment.Normalize(form);
        if (normalize && _s.AddPrefixSpace && !segment.StartsWith(' ')) segment = " " + segment;
        int shift = segment.Length == raw.Length ? start : -1;
        int first = ids.Count;

        if (!preTokenize || _s.Split is null)
        {
            EncodeWord(segment, 0, segment.Length, ids, offsets, shift);
        }
        else
        {
            int last = 0;
            for (Match m = _s.Split.Match(segment); m.Success; m = m.NextMatch())
            {
                if (m.Length == 0) continue;
                if (m.Index > last) EncodeWord(segment, last, m.Index, ids, offsets, shift);
                EncodeWord(segment, m.Index, m.Index + m.Length, ids, offsets, shift);
                last = m.Index + m.Length;
            }
            if (last < segment.Length) EncodeWord(segment, last, segment.Length, ids, offsets, shift);
        }

        if (shift < 0)
            for (int i = first; i < offsets.Count; i++) offsets[i] = (start, end);
    }

    /// <summary>BPE on one word: its UTF-8 bytes as symbols, then merges lowest rank first.</summary>
    private void EncodeWord(string segment, int from, int to, List<int> ids, List<(int, int)> offsets, int shift)
    {
        ReadOnlySpan<char> word = segment.AsSpan(from, to - from);
        int byteCount = Encoding.UTF8.GetByteCount(word);
        byte[] utf8 = ArrayPool<byte>.Shared.Rent(byteCount);
        try
        {
            Encoding.UTF8.GetBytes(word, utf8);
            // Source char offset of each byte (relative to the segment).
            var byteSource = new int[byteCount + 1];
            for (int i = 0, b = 0; i < word.Length; i++)
            {
                int len = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 4
                    : word[i] < 0x80 ? 1 : word[i] < 0x800 ? 2 : 3;
                for (int k = 0; k < len; k++) byteSource[b++] = from + i;
                if (len == 4) i++;
            }
            byteSource[byteCount] = to;
            int Offset(int bytePos) => shift < 0 ? 0 : shift + byteSource[bytePos];

            if (_s.IgnoreMerges)
            {
                var chars = new char[byteCount];
                for (int b = 0; b < byteCount; b++) chars[b] = ByteLevelAlphabet.ByteToChar[utf8[b]];
                if (_vocab.TryGetValue(new string(chars), out int whole) && !_addedIds.Contains(whole))
                {
                    ids.Add(whole);
                    offsets.Add((Offset(0), shift < 0 ? 0 : shift + to));
                    return;
                }
            }

            var symId = new List<int>(byteCount);
            var symStart = new List<int>(byteCount);
            var symEnd = new List<int>(byteCount);
            for (int b = 0; b < byteCount; b++)
            {
                int id = _byteToId[utf8[b]];
                if (id < 0) id = _unkId;
                if (id < 0) continue; // HF drops a byte without a token when there is no unk_token
                symId.Add(id);
                symStart.Add(b);
                symEnd.Add(b + 1);
            }
            int n = symId.Count;
            if (n == 0) return;
            int[] next = BpeMerges.Apply(symId, symEnd, _merges);

            for (int i = 0; i >= 0; i = next[i])
            {
                ids.Add(symId[i]);
                offsets.Add((Offset(symStart[i]), Offset(symEnd[i])));
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(utf8);
        }
    }

    private static string ReplaceLoneSurrogates(string s)
    {
        int i = 0;
        for (; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { i++; continue; }
            if (char.IsSurrogate(s[i])) break;
        }
        if (i == s.Length) return s;
        var sb = new StringBuilder(s.Length);
        foreach (Rune r in s.EnumerateRunes()) sb.Append(r.ToString()); // lone surrogates enumerate as U+FFFD
        return sb.ToString();
    }
}
