using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace CMoE.Modeling.Tokenization;

/// <summary>
/// A tokenizer.json <c>pre_tokenizer</c>: splits each normalized piece into the words the model sees (Hugging Face
/// semantics; empty words are dropped). <c>ByteLevel</c> (optional prefix space, GPT-2 regex, bytes as characters),
/// <c>Split</c> (a string or a code-point regex, any split behaviour), <c>Digits</c> (SmolLM), <c>Metaspace</c> (" " to "▁", the dummy prefix by
/// prepend_scheme, optional split before each "▁") and <c>Sequence</c>.
/// </summary>
internal abstract class PreTokenizer
{
    /// <summary>Adds the words of <paramref name="piece"/> to <paramref name="words"/>.</summary>
    public abstract void Split(NormalizedText piece, List<NormalizedText> words);

    /// <summary>Reads the <c>pre_tokenizer</c> element; null or absent gives null (the piece is one word).</summary>
    /// <exception cref="CMoEFormatException">The type (or a setting of it) is not supported; the message names it.</exception>
    public static PreTokenizer? Read(JsonElement e, string path)
    {
        if (e.ValueKind != JsonValueKind.Object) return null;
        string type = HfJson.TypeOf(e);
        switch (type)
        {
            case "Sequence":
                var items = HfJson.Items(e, "pretokenizers").Select(p => Read(p, path)).OfType<PreTokenizer>().ToArray();
                return items.Length == 1 ? items[0] : new SequencePreTokenizer(items);
            case "ByteLevel":
                return new ByteLevelPreTokenizer(HfJson.Bool(e, "add_prefix_space", absent: true), HfJson.Bool(e, "use_regex", absent: true));
            case "Split":
                var (literal, regex) = HfJson.Pattern(e, path, "pre_tokenizer");
                string behavior = HfJson.String(e, "behavior") ?? "";
                if (HfJson.Bool(e, "invert")) throw HfJson.Unsupported(path, "pre_tokenizer", "Split with invert true");
                var b = behavior switch
                {
                    "Isolated" => SplitBehavior.Isolated,
                    "Removed" => SplitBehavior.Removed,
                    "MergedWithPrevious" => SplitBehavior.MergedWithPrevious,
                    "MergedWithNext" => SplitBehavior.MergedWithNext,
                    _ => throw HfJson.Unsupported(path, "pre_tokenizer", $"Split behavior '{behavior}'"),
                };
                return new SplitPreTokenizer(literal, regex, b);
            case "Digits":
                return new DigitsPreTokenizer(HfJson.Bool(e, "individual_digits"));
            case "Metaspace":
                string r = HfJson.String(e, "replacement") ?? "▁";
                string scheme = HfJson.String(e, "prepend_scheme") ?? (HfJson.Bool(e, "add_prefix_space", absent: true) ? "always" : "never");
                if (scheme is not ("always" or "first" or "never")) throw HfJson.Unsupported(path, "pre_tokenizer", $"Metaspace(prepend_scheme \"{scheme}\")");
                return new MetaspacePreTokenizer(r, scheme, HfJson.Bool(e, "split", absent: true));
            default:
                throw HfJson.Unsupported(path, "pre_tokenizer", type);
        }
    }
}

/// <summary>Where a split's matches go (HF <c>SplitDelimiterBehavior</c>).</summary>
internal enum SplitBehavior
{
    /// <summary>Matches are dropped.</summary>
    Removed,

    /// <summary>Every match is a word, and so is every gap between matches.</summary>
    Isolated,

    /// <summary>A match joins the word before it.</summary>
    MergedWithPrevious,

    /// <summary>A match joins the word after it.</summary>
    MergedWithNext,
}

/// <summary>Each pre-tokenizer in turn, on every word the previous one made.</summary>
internal sealed class SequencePreTokenizer(IReadOnlyList<PreTokenizer> items) : PreTokenizer
{
    public override void Split(NormalizedText piece, List<NormalizedText> words)
    {
        var current = new List<NormalizedText> { piece };
        foreach (var p in items)
        {
            var next = new List<NormalizedText>();
            foreach (var w in current) p.Split(w, next);
            current = next;
        }
        words.AddRange(current);
    }
}

/// <summary>HF <c>Split</c>: matches of a string or a regex, placed by the behaviour.</summary>
internal sealed class SplitPreTokenizer(string? literal, Regex? regex, SplitBehavior behavior) : PreTokenizer
{
    public override void Split(NormalizedText piece, List<NormalizedText> words) => SplitOn(piece, Matches(piece.Text), behavior, words);

    private IEnumerable<(int Start, int End)> Matches(string text)
    {
        if (regex is not null)
        {
            for (Match m = regex.Match(text); m.Success; m = m.NextMatch())
                if (m.Length > 0) yield return (m.Index, m.Index + m.Length);
            yield break;
        }
        if (literal!.Length == 0) yield break;
        for (int i = text.IndexOf(literal, StringComparison.Ordinal); i >= 0; i = text.IndexOf(literal, i + literal.Length, StringComparison.Ordinal))
            yield return (i, i + literal.Length);
    }

    /// <summary>Cuts <paramref name="piece"/> at the matches (ascending, non-overlapping) as HF's <c>NormalizedString::split</c>.</summary>
    public static void SplitOn(NormalizedText piece, IEnumerable<(int Start, int End)> matches, SplitBehavior behavior, List<NormalizedText> words)
    {
        // The whole text as alternating (range, is_match) parts.
        var parts = new List<(int Start, int End, bool Match)>();
        int pos = 0;
        foreach (var (s, e) in matches)
        {
            if (s > pos) parts.Add((pos, s, false));
            parts.Add((s, e, true));
            pos = e;
        }
        if (pos < piece.Text.Length) parts.Add((pos, piece.Text.Length, false));

        var ranges = new List<(int Start, int End)>();
        bool previousMatch = false;
        switch (behavior)
        {
            case SplitBehavior.Removed:
                ranges.AddRange(parts.Where(p => !p.Match).Select(p => (p.Start, p.End)));
                break;
            case SplitBehavior.Isolated:
                ranges.AddRange(parts.Select(p => (p.Start, p.End)));
                break;
            case SplitBehavior.MergedWithPrevious:
                foreach (var p in parts)
                {
                    if (p.Match && !previousMatch && ranges.Count > 0) ranges[^1] = (ranges[^1].Start, p.End);
                    else ranges.Add((p.Start, p.End));
                    previousMatch = p.Match;
                }
                break;
            case SplitBehavior.MergedWithNext:
                for (int i = parts.Count - 1; i >= 0; i--)
                {
                    var p = parts[i];
                    if (p.Match && !previousMatch && ranges.Count > 0) ranges[^1] = (p.Start, ranges[^1].End);
                    else ranges.Add((p.Start, p.End));
                    previousMatch = p.Match;
                }
                ranges.Reverse();
                break;
        }
        foreach (var (s, e) in ranges)
            if (e > s) words.Add(piece.Slice(s, e));
    }
}

/// <summary>HF <c>Digits</c>: numeric characters (Rust <c>char::is_numeric</c>: Nd, Nl, No) isolated one by one, or in runs.</summary>
internal sealed class DigitsPreTokenizer(bool individualDigits) : PreTokenizer
{
    public override void Split(NormalizedText piece, List<NormalizedText> words)
    {
        string t = piece.Text;
        var matches = new List<(int Start, int End)>();
        for (int i = 0; i < t.Length;)
        {
            Rune.DecodeFromUtf16(t.AsSpan(i), out Rune r, out int n);
            if (Rune.IsNumber(r))
            {
                if (!individualDigits && matches.Count > 0 && matches[^1].End == i) matches[^1] = (matches[^1].Start, i + n);
                else matches.Add((i, i + n));
            }
            i += n;
        }
        SplitPreTokenizer.SplitOn(piece, matches, SplitBehavior.Isolated, words);
    }
}

/// <summary>
/// HF <c>Metaspace</c>: spaces become the replacement, the replacement goes in front by prepend_scheme (always: unless
/// the word starts with it; first: also only for the piece at offset 0 of the input; never), then, with split, the
/// piece is cut before each replacement character.
/// </summary>
internal sealed class MetaspacePreTokenizer(string replacement, string prependScheme, bool split) : PreTokenizer
{
    public override void Split(NormalizedText piece, List<NormalizedText> words)
    {
        var t = piece.Replace(" ", replacement);
        bool prepend = prependScheme switch
        {
            "always" => !t.Text.StartsWith(replacement, StringComparison.Ordinal),
            "first" => !t.Text.StartsWith(replacement, StringComparison.Ordinal) && t.OriginalStart == 0,
            _ => false,
        };
        if (prepend) t = t.Prepend(replacement);
        if (!split)
        {
            if (t.Text.Length > 0) words.Add(t);
            return;
        }
        var matches = new List<(int, int)>();
        for (int i = t.Text.IndexOf(replacement, StringComparison.Ordinal); i >= 0; i = t.Text.IndexOf(replacement, i + replacement.Length, StringComparison.Ordinal))
            matches.Add((i, i + replacement.Length));
        SplitPreTokenizer.SplitOn(t, matches, SplitBehavior.MergedWithNext, words);
    }
}

/// <summary>
/// HF <c>ByteLevel</c>: a space in front of a word not starting with one (add_prefix_space), GPT-2's regex split
/// (use_regex), then each word's UTF-8 bytes as <see cref="ByteLevelAlphabet"/> characters.
/// </summary>
internal sealed class ByteLevelPreTokenizer(bool addPrefixSpace, bool useRegex) : PreTokenizer
{
    /// <summary>The pre-tokenization regex of GPT-2, which HF's ByteLevel pre-tokenizer uses when use_regex is true.</summary>
    internal const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private static readonly Lazy<Regex> Gpt2 = new(() => CodePointRegex.Create(Gpt2Pattern));

    public override void Split(NormalizedText piece, List<NormalizedText> words)
    {
        if (addPrefixSpace && !piece.Text.StartsWith(' ')) piece = piece.Prepend(" ");
        var split = new List<NormalizedText>();
        if (useRegex)
        {
            var matches = new List<(int, int)>();
            for (Match m = Gpt2.Value.Match(piece.Text); m.Success; m = m.NextMatch())
                if (m.Length > 0) matches.Add((m.Index, m.Index + m.Length));
            SplitPreTokenizer.SplitOn(piece, matches, SplitBehavior.Isolated, split);
        }
        else if (piece.Text.Length > 0)
        {
            split.Add(piece);
        }
        var utf8 = new byte[4];
        foreach (var w in split)
        {
            words.Add(w.MapRunes(r =>
            {
                int n = r.EncodeToUtf8(utf8);
                var chars = new char[n];
                for (int k = 0; k < n; k++) chars[k] = ByteLevelAlphabet.ByteToChar[utf8[k]];
                return new string(chars);
            }));
        }
    }
}
