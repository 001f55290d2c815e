using System.Globalization;
using System.Text;
using System.Text.Json;

namespace CMoE.Modeling.Tokenization;

/// <summary>One entry of tokenizer.json's <c>added_tokens</c>, with its matching flags.</summary>
internal sealed record AddedToken(int Id, string Content, bool Special, bool Normalized, bool SingleWord, bool LStrip, bool RStrip);

/// <summary>
/// The added tokens as Hugging Face's <c>AddedVocabulary</c> matches them in a text: tokens with <c>normalized: false</c>
/// are found in the raw input first; the pieces between them are normalized and searched again for the tokens with
/// <c>normalized: true</c> (in their normalized form). Matching is leftmost-longest and non-overlapping; a
/// <c>single_word</c> token counts only when no word character (<c>\w</c>) touches it; <c>lstrip</c>/<c>rstrip</c> take
/// the whitespace before/after it into the token. Special or not, a matched token is its id (HF encodes every added token
/// written in the text, as with add_special_tokens).
/// </summary>
internal sealed class AddedTokens
{
    private readonly Matcher _raw;
    private readonly Matcher _normalized;

    public AddedTokens(IReadOnlyList<AddedToken> tokens, TextNormalizer? normalizer)
    {
        All = tokens;
        _raw = new Matcher(tokens.Where(t => !t.Normalized).Select(t => (t.Content, t)));
        _normalized = new Matcher(tokens.Where(t => t.Normalized).Select(t => (normalizer?.Apply(t.Content) ?? t.Content, t)));
    }

    /// <summary>The tokens as read.</summary>
    public IReadOnlyList<AddedToken> All { get; }

    /// <summary>Reads <c>added_tokens</c> (absent: none).</summary>
    public static List<AddedToken> Read(JsonElement root, string path)
    {
        var added = new List<AddedToken>();
        if (!root.TryGetProperty("added_tokens", out var a) || a.ValueKind == JsonValueKind.Null) return added;
        if (a.ValueKind != JsonValueKind.Array) throw HfJson.Bad(path, "has an \"added_tokens\" that is not an array");
        foreach (var e in a.EnumerateArray())
        {
            if (!e.TryGetProperty("id", out var id) || !id.TryGetInt32(out int i) || HfJson.String(e, "content") is not { } content)
                throw HfJson.Bad(path, $"has an added token without an integer \"id\" and a string \"content\": {e.GetRawText()}");
            bool special = HfJson.Bool(e, "special");
            added.Add(new AddedToken(i, content, special, HfJson.Bool(e, "normalized", absent: !special),
                HfJson.Bool(e, "single_word"), HfJson.Bool(e, "lstrip"), HfJson.Bool(e, "rstrip")));
        }
        return added;
    }

    /// <summary>Cuts <paramref name="text"/> at the raw-matched tokens: (piece, token id or null for plain text).</summary>
    public void SplitRaw(NormalizedText text, List<(NormalizedText Piece, int? Id)> output) => _raw.Split(text, output);

    /// <summary>Cuts a normalized piece at the normalized-matched tokens.</summary>
    public void SplitNormalized(NormalizedText text, List<(NormalizedText Piece, int? Id)> output) => _normalized.Split(text, output);

    /// <summary>Leftmost-longest matching of a set of strings, with HF's single_word / lstrip / rstrip rules.</summary>
    private sealed class Matcher
    {
        private readonly Dictionary<char, (string Pattern, AddedToken Token)[]> _byFirstChar; // longest first

        public Matcher(IEnumerable<(string Pattern, AddedToken Token)> patterns) =>
            _byFirstChar = patterns.Where(p => p.Pattern.Length > 0)
                .GroupBy(p => p.Pattern, StringComparer.Ordinal).Select(g => g.First()) // one token per pattern
                .GroupBy(p => p.Pattern[0])
                .ToDictionary(g => g.Key, g => g.OrderByDescending(p => p.Pattern.Length).ToArray());

        public void Split(NormalizedText text, List<(NormalizedText, int?)> output)
        {
            string s = text.Text;
            if (_byFirstChar.Count == 0 || s.Length == 0)
            {
                output.Add((text, null));
                return;
            }
            int startOffset = 0;
            foreach (var (matchStart, matchEnd, token) in Matches(s))
            {
                int start = matchStart, stop = matchEnd;
                if (token.SingleWord)
                {
                    bool startSpace = start == 0 || !EndsWithWord(s, start);
                    bool stopSpace = stop == s.Length || !StartsWithWord(s, stop);
                    if (!startSpace || !stopSpace) continue;
                }
                if (token.LStrip)
                {
                    int newStart = start;
                    while (newStart > 0 && IsWhiteSpaceBefore(s, newStart, out int w)) newStart -= w;
                    start = Math.Max(newStart, startOffset);
                }
                if (token.RStrip)
                {
                    while (stop < s.Length && IsWhiteSpaceAt(s, stop, out int w)) stop += w;
                }
                if (startOffset < start) output.Add((text.Slice(startOffset, start), null));
                output.Add((text.Slice(start, stop), token.Id));
                startOffset = stop;
            }
            if (startOffset != s.Length) output.Add((text.Slice(startOffset, s.Length), null));
        }

        /// <summary>Non-overlapping leftmost-longest matches on the text (independent of the strip extensions, as aho-corasick's find_iter).</summary>
        private IEnumerable<(int Start, int End, AddedToken Token)> Matches(string s)
        {
            for (int i = 0; i < s.Length;)
            {
                if (_byFirstChar.TryGetValue(s[i], out var candidates))
                {
                    bool found = false;
                    foreach (var (pattern, token) in candidates)
                    {
                        if (string.CompareOrdinal(s, i, pattern, 0, pattern.Length) == 0 && i + pattern.Length <= s.Length)
                        {
                            yield return (i, i + pattern.Length, token);
                            i += pattern.Length;
                            found = true;
                            break;
                        }
                    }
                    if (found) continue;
                }
                i++;
            }
        }

        private static bool IsWhiteSpaceAt(string s, int i, out int width)
        {
            Rune.DecodeFromUtf16(s.AsSpan(i), out Rune r, out width);
            return Rune.IsWhiteSpace(r);
        }

        private static bool IsWhiteSpaceBefore(string s, int end, out int width)
        {
            Rune.DecodeLastFromUtf16(s.AsSpan(0, end), out Rune r, out width);
            return Rune.IsWhiteSpace(r);
        }

        private static bool StartsWithWord(string s, int i)
        {
            Rune.DecodeFromUtf16(s.AsSpan(i), out Rune r, out _);
            return IsWordChar(r);
        }

        private static bool EndsWithWord(string s, int end)
        {
            Rune.DecodeLastFromUtf16(s.AsSpan(0, end), out Rune r, out _);
            return IsWordChar(r);
        }

        /// <summary>Rust regex's Unicode <c>\w</c>: letters, marks, decimal digits, letter numbers, connector punctuation, joiners.</summary>
        private static bool IsWordChar(Rune r) => r.Value is 0x200C or 0x200D || Rune.GetUnicodeCategory(r) switch
        {
            UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter or UnicodeCategory.ModifierLetter
                or UnicodeCategory.OtherLetter or UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark
                or UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.ConnectorPunctuation => true,
            _ => false,
        };
    }
}
