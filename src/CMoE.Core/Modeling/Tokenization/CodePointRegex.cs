using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace CMoE.Modeling.Tokenization;

/// <summary>
/// Compiles a Hugging Face pre-tokenizer regex (Rust <c>regex</c> / Oniguruma syntax, which matches whole Unicode code
/// points) into a .NET <see cref="Regex"/> that gives the same matches on UTF-16 text.
/// .NET matches UTF-16 code units, so <c>\p{L}</c> misses letters outside the BMP (𝐱, 𠮷: surrogate pairs, category Cs)
/// and a negated class such as <c>[^\s\p{L}\p{N}]</c> takes one half of a pair. The pattern is rewritten:
/// <list type="bullet">
/// <item><c>\p{X}</c> outside a class becomes <c>(?:\p{X}|astral X)</c>, where "astral X" is an alternation of surrogate
///   pairs whose code points are in category X (built once per category from <see cref="Rune.GetUnicodeCategory"/>);</item>
/// <item>a positive class holding <c>\p{X}</c> becomes <c>(?:[...]|astral X)</c>;</item>
/// <item>a negated class <c>[^...]</c> becomes "one surrogate pair not in any astral category it names, or one BMP char
///   not in the class", so it always consumes a whole code point;</item>
/// <item><c>\S</c> and <c>.</c> consume a whole pair when they meet one; <c>\d</c> / <c>\D</c> are read as <c>\p{Nd}</c> /
///   <c>\P{Nd}</c>. (<c>\w</c>, <c>\W</c> and the shorthands inside a class stay BMP-only; no known tokenizer uses them.)</item>
/// </list>
/// Matching is culture-invariant (Rust's <c>(?i)</c> is Unicode simple case folding). Input must not hold lone
/// surrogates (the tokenizer replaces them by U+FFFD first, as a Rust string would hold them).
/// </summary>
internal static class CodePointRegex
{
    private const string Pair = @"[\uD800-\uDBFF][\uDC00-\uDFFF]";
    private static readonly Dictionary<string, string> AstralCache = new(StringComparer.Ordinal);

    /// <summary>The .NET regex equivalent to <paramref name="pattern"/> on code points.</summary>
    public static Regex Create(string pattern) =>
        new(Translate(pattern), RegexOptions.Compiled | RegexOptions.CultureInvariant);

    /// <summary>The rewritten pattern text (see the class remarks).</summary>
    public static string Translate(string pattern)
    {
        var sb = new StringBuilder(pattern.Length * 2);
        for (int i = 0; i < pattern.Length; i++)
        {
            char c = pattern[i];
            if (c == '\\' && i + 1 < pattern.Length)
            {
                if (TryCategory(pattern, i, out string name, out bool negated, out int end))
                {
                    AppendCategory(sb, name, negated);
                    i = end - 1;
                    continue;
                }
                char e = pattern[i + 1];
                if (e == 'S') sb.Append("(?:").Append(Pair).Append(@"|\S)");
                else if (e is 'd' or 'D') AppendCategory(sb, "Nd", e == 'D');
                else sb.Append(c).Append(e);
                i++;
            }
            else if (c == '[')
            {
                i = TranslateClass(pattern, i, sb) - 1;
            }
            else if (c == '.')
            {
                sb.Append("(?:").Append(Pair).Append(@"|[^\n])");
            }
            else
            {
                sb.Append(c);
            }
        }
        return sb.ToString();
    }

    /// <summary>One code point in (or, negated, outside) the category: a BMP char or a whole surrogate pair.</summary>
    private static void AppendCategory(StringBuilder sb, string name, bool negated)
    {
        if (negated) sb.Append("(?:(?!").Append(Astral(name)).Append(')').Append(Pair).Append(@"|(?![\uD800-\uDFFF])\P{").Append(name).Append("})");
        else sb.Append(@"(?:\p{").Append(name).Append("}|").Append(Astral(name)).Append(')');
    }

    /// <summary>Rewrites the class starting at <paramref name="start"/>; returns the index after its closing ']'.</summary>
    private static int TranslateClass(string pattern, int start, StringBuilder sb)
    {
        int i = start + 1;
        bool negated = i < pattern.Length && pattern[i] == '^';
        if (negated) i++;
        var items = new StringBuilder();
        var categories = new List<string>();
        bool first = true;
        for (; i < pattern.Length && (pattern[i] != ']' || first); i++)
        {
            first = false;
            if (pattern[i] == '[') throw new ArgumentException($"nested character class at offset {i} (not supported)");
            if (pattern[i] == '\\' && i + 1 < pattern.Length)
            {
                if (TryCategory(pattern, i, out string name, out bool catNegated, out int end))
                {
                    if (catNegated) throw new ArgumentException($"\\P{{{name}}} inside a character class (not supported)");
                    categories.Add(name);
                    items.Append(@"\p{").Append(name).Append('}');
                    i = end - 1;
                    continue;
                }
                items.Append(pattern[i]).Append(pattern[i + 1]);
                i++;
                continue;
            }
            items.Append(pattern[i]);
        }
        if (i >= pattern.Length) throw new ArgumentException($"unterminated character class at offset {start}");
        string body = items.ToString();
        if (negated)
        {
            // One pair outside every astral category named, or one BMP char outside the class.
            sb.Append("(?:");
            if (categories.Count > 0) sb.Append("(?!").Append(string.Join('|', categories.Select(Astral))).Append(')');
            sb.Append(Pair).Append("|[^").Append(body).Append(@"\uD800-\uDFFF])");
        }
        else if (categories.Count > 0)
        {
            sb.Append("(?:[").Append(body).Append(']');
            foreach (string name in categories) sb.Append('|').Append(Astral(name));
            sb.Append(')');
        }
        else
        {
            sb.Append('[').Append(body).Append(']');
        }
        return i + 1;
    }

    /// <summary>Reads <c>\p{Name}</c>, <c>\pL</c> or <c>\P{Name}</c> at <paramref name="i"/>.</summary>
    private static bool TryCategory(string pattern, int i, out string name, out bool negated, out int end)
    {
        name = "";
        end = i;
        negated = pattern[i + 1] == 'P';
        if (pattern[i + 1] is not ('p' or 'P') || i + 2 >= pattern.Length) return false;
        if (pattern[i + 2] == '{')
        {
            int close = pattern.IndexOf('}', i + 3);
            if (close < 0) throw new ArgumentException($"unterminated \\p{{ at offset {i}");
            name = pattern[(i + 3)..close];
            end = close + 1;
        }
        else
        {
            name = pattern[i + 2].ToString();
            end = i + 3;
        }
        if (name.StartsWith('^')) throw new ArgumentException($"\\p{{^{name[1..]}}} is not supported");
        _ = Categories(name); // validates the name
        return true;
    }

    /// <summary>An alternation of the surrogate pairs whose code points are in the category (or group) <paramref name="name"/>.</summary>
    private static string Astral(string name)
    {
        lock (AstralCache)
        {
            if (AstralCache.TryGetValue(name, out string? cached)) return cached;
            var set = Categories(name);
            // Per high surrogate, the low-surrogate ranges in the set; runs of highs with identical ranges share one branch.
            var branches = new List<(int HighFrom, int HighTo, string Lows)>();
            for (int high = 0xD800; high <= 0xDBFF; high++)
            {
                var lows = new StringBuilder();
                int runStart = -1;
                for (int low = 0xDC00; low <= 0xE000; low++)
                {
                    bool inSet = low < 0xE000 && set.Contains(Rune.GetUnicodeCategory(new Rune((char)high, (char)low)));
                    if (inSet && runStart < 0) runStart = low;
                    if (!inSet && runStart >= 0)
                    {
                        lows.Append($@"\u{runStart:X4}");
                        if (low - 1 > runStart) lows.Append($@"-\u{low - 1:X4}");
                        runStart = -1;
                    }
                }
                if (lows.Length == 0) continue;
                string l = lows.ToString();
                if (branches.Count > 0 && branches[^1].HighTo == high - 1 && branches[^1].Lows == l) branches[^1] = (branches[^1].HighFrom, high, l);
                else branches.Add((high, high, l));
            }
            string result = branches.Count == 0 ? "(?!)" : "(?:" + string.Join('|', branches.Select(b =>
                (b.HighFrom == b.HighTo ? $@"\u{b.HighFrom:X4}" : $@"[\u{b.HighFrom:X4}-\u{b.HighTo:X4}]") + "[" + b.Lows + "]")) + ")";
            AstralCache[name] = result;
            return result;
        }
    }

    private static HashSet<UnicodeCategory> Categories(string name) => name switch
    {
        "L" or "Letter" => [UnicodeCategory.UppercaseLetter, UnicodeCategory.LowercaseLetter, UnicodeCategory.TitlecaseLetter, UnicodeCategory.ModifierLetter, UnicodeCategory.OtherLetter],
        "Lu" => [UnicodeCategory.UppercaseLetter],
        "Ll" => [UnicodeCategory.LowercaseLetter],
        "Lt" => [UnicodeCategory.TitlecaseLetter],
        "Lm" => [UnicodeCategory.ModifierLetter],
        "Lo" => [UnicodeCategory.OtherLetter],
        "M" or "Mark" => [UnicodeCategory.NonSpacingMark, UnicodeCategory.SpacingCombiningMark, UnicodeCategory.EnclosingMark],
        "Mn" => [UnicodeCategory.NonSpacingMark],
        "Mc" => [UnicodeCategory.SpacingCombiningMark],
        "Me" => [UnicodeCategory.EnclosingMark],
        "N" or "Number" => [UnicodeCategory.DecimalDigitNumber, UnicodeCategory.LetterNumber, UnicodeCategory.OtherNumber],
        "Nd" => [UnicodeCategory.DecimalDigitNumber],
        "Nl" => [UnicodeCategory.LetterNumber],
        "No" => [UnicodeCategory.OtherNumber],
        "P" or "Punctuation" => [UnicodeCategory.ConnectorPunctuation, UnicodeCategory.DashPunctuation, UnicodeCategory.OpenPunctuation,
            UnicodeCategory.ClosePunctuation, UnicodeCategory.InitialQuotePunctuation, UnicodeCategory.FinalQuotePunctuation, UnicodeCategory.OtherPunctuation],
        "S" or "Symbol" => [UnicodeCategory.MathSymbol, UnicodeCategory.CurrencySymbol, UnicodeCategory.ModifierSymbol, UnicodeCategory.OtherSymbol],
        "Z" => [UnicodeCategory.SpaceSeparator, UnicodeCategory.LineSeparator, UnicodeCategory.ParagraphSeparator],
        _ => throw new ArgumentException($"the Unicode category \\p{{{name}}} is not supported (supported: L, Lu, Ll, Lt, Lm, Lo, M, Mn, Mc, Me, N, Nd, Nl, No, P, S, Z)"),
    };
}
