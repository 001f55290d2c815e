using System.Buffers;
using Microsoft.ML.Tokenizers;

namespace CMoE.Modeling.Tokenization;

/// <summary>
/// A Hugging Face <c>tokenizer.json</c> pipeline as a Microsoft.ML <see cref="Tokenizer"/>, run as HF's
/// <c>Tokenizer::encode</c> runs it: added tokens matched in the raw text (<see cref="AddedTokens"/>), each remaining piece
/// normalized (<see cref="TextNormalizer"/>) and searched for normalized added tokens, split into words
/// (<see cref="PreTokenizer"/>), each word through the BPE model (<see cref="BpeModel"/>). Decoding maps ids to token
/// strings and runs the <see cref="TokenDecoder"/> chain. The post-processor's template (<see cref="PostTemplate"/>) is
/// not applied here; <see cref="TextTokenizer"/> adds BOS/EOS. Every family is this one class with other components.
/// The whole pipeline always runs: Microsoft.ML's considerNormalization / considerPreTokenization flags are not read
/// (skipping a step would give ids the model was not trained on).
/// </summary>
internal sealed class HfTokenizer : Tokenizer
{
    private readonly AddedTokens _added;
    private readonly TextNormalizer? _normalizer;
    private readonly PreTokenizer? _preTokenizer;
    private readonly BpeModel _model;
    private readonly TokenDecoder? _decoder;
    private readonly string?[] _idToToken;
    private readonly bool[] _isSpecial;
    private readonly Dictionary<string, int> _vocab;

    public HfTokenizer(AddedTokens added, TextNormalizer? normalizer, PreTokenizer? preTokenizer, BpeModel model, TokenDecoder? decoder)
    {
        _added = added;
        _normalizer = normalizer;
        _preTokenizer = preTokenizer;
        _model = model;
        _decoder = decoder;
        _vocab = new Dictionary<string, int>(model.Vocab, StringComparer.Ordinal);
        foreach (var a in added.All) _vocab[a.Content] = a.Id;
        int size = _vocab.Count == 0 ? 0 : _vocab.Values.Max() + 1;
        _idToToken = new string?[size];
        _isSpecial = new bool[size];
        foreach (var (token, id) in model.Vocab) _idToToken[id] = token;
        foreach (var a in added.All)
        {
            _idToToken[a.Id] = a.Content;
            _isSpecial[a.Id] = a.Special;
        }
    }

    /// <summary>Token string to id over the model vocabulary and the added tokens.</summary>
    public IReadOnlyDictionary<string, int> Vocabulary => _vocab;

    /// <summary>One past the largest id.</summary>
    public int VocabSize => _idToToken.Length;

    protected override EncodeResults<EncodedToken> EncodeToTokens(string? text, ReadOnlySpan<char> textSpan, EncodeSettings settings)
    {
        string input = text ?? textSpan.ToString();
        var encoded = Encode(input);
        int count = Math.Min(encoded.Count, Math.Max(0, settings.MaxTokenCount));
        var tokens = new List<EncodedToken>(count);
        for (int i = 0; i < count; i++)
            tokens.Add(new EncodedToken(encoded[i].Id, _idToToken[encoded[i].Id] ?? "", new Range(encoded[i].Start, encoded[i].End)));
        return new EncodeResults<EncodedToken>
        {
            Tokens = tokens,
            NormalizedText = null,
            CharsConsumed = count == encoded.Count ? input.Length : (count == 0 ? 0 : encoded[count - 1].End),
        };
    }

    protected override EncodeResults<int> EncodeToIds(string? text, ReadOnlySpan<char> textSpan, EncodeSettings settings)
    {
        string input = text ?? textSpan.ToString();
        var encoded = Encode(input);
        int count = Math.Min(encoded.Count, Math.Max(0, settings.MaxTokenCount));
        return new EncodeResults<int>
        {
            Tokens = encoded.Take(count).Select(t => t.Id).ToList(),
            NormalizedText = null,
            CharsConsumed = count == encoded.Count ? input.Length : (count == 0 ? 0 : encoded[count - 1].End),
        };
    }

    /// <summary>The tokens of <paramref name="input"/> with their ranges in it (no BOS/EOS).</summary>
    public List<(int Id, int Start, int End)> Encode(string input)
    {
        var result = new List<(int, int, int)>();
        var raw = new List<(NormalizedText Piece, int? Id)>();
        _added.SplitRaw(NormalizedText.FromInput(ReplaceLoneSurrogates(input)), raw);
        var pieces = new List<(NormalizedText Piece, int? Id)>();
        var words = new List<NormalizedText>();
        var wordTokens = new List<(int Id, int Start, int End)>();
        foreach (var (piece, id) in raw)
        {
            if (id is { } addedId)
            {
                Add(piece, addedId);
                continue;
            }
            pieces.Clear();
            _added.SplitNormalized(_normalizer?.Apply(piece) ?? piece, pieces);
            foreach (var (normalized, nid) in pieces)
            {
                if (normalized.Text.Length == 0) continue;
                if (nid is { } normalizedId)
                {
                    Add(normalized, normalizedId);
                    continue;
                }
                words.Clear();
                if (_preTokenizer is null) words.Add(normalized);
                else _preTokenizer.Split(normalized, words);
                foreach (var w in words)
                {
                    wordTokens.Clear();
                    _model.Tokenize(w.Text, wordTokens);
                    foreach (var (tid, s, e) in wordTokens)
                    {
                        var (os, oe) = w.Original(s, e);
                        result.Add((tid, os, oe));
                    }
                }
            }
        }
        return result;

        void Add(NormalizedText piece, int tokenId)
        {
            var (s, e) = piece.Original(0, piece.Text.Length);
            result.Add((tokenId, s, e));
        }
    }

    /// <summary>Decodes ids to text, leaving out special added tokens (BOS, EOS, ...).</summary>
    public override string Decode(IEnumerable<int> ids) => Decode(ids, considerSpecialTokens: false);

    /// <summary>Decodes ids to text as HF's <c>decode</c>; special added tokens are written only when <paramref name="considerSpecialTokens"/>.</summary>
    public string Decode(IEnumerable<int> ids, bool considerSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var tokens = new List<string>();
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)_idToToken.Length || _idToToken[id] is not { } token)
                throw new ArgumentOutOfRangeException(nameof(ids), id, $"Token id {id} is not in this tokenizer's vocabulary (size {VocabSize}).");
            if (!considerSpecialTokens && _isSpecial[id]) continue;
            tokens.Add(token);
        }
        return _decoder is null ? string.Join(' ', tokens) : string.Concat(_decoder.DecodeChain(tokens));
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

    /// <summary>A Rust string cannot hold lone surrogates; HF sees U+FFFD (one char each, so offsets stay).</summary>
    private static string ReplaceLoneSurrogates(string s)
    {
        char[]? copy = null;
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { i++; continue; }
            if (char.IsSurrogate(s[i])) (copy ??= s.ToCharArray())[i] = '\uFFFD';
        }
        return copy is null ? s : new string(copy);
    }
}
