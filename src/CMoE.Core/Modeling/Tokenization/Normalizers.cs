using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace CMoE.Modeling.Tokenization;

/// <summary>
/// A tokenizer.json <c>normalizer</c>, run on each piece of text between added tokens (Hugging Face semantics):
/// <c>NFC</c>/<c>NFD</c>/<c>NFKC</c>/<c>NFKD</c>, <c>Prepend</c> (in front of a non-empty piece; Llama-2's
/// dummy prefix "▁"), <c>Replace</c> (a string or a regex; Llama-2 and Gemma turn " " into "▁") and <c>Sequence</c>.
/// </summary>
internal abstract class TextNormalizer
{
    /// <summary>The normalized piece.</summary>
    /// <remarks>(Lowercase is not offered: Rust's <c>to_lowercase</c> uses full case mapping and Final_Sigma, .NET's does not.)</remarks>
    public abstract NormalizedText Apply(NormalizedText text);

    /// <summary>The normalized form of a plain string (a normalized added token's content is matched in that form).</summary>
    public string Apply(string text) => Apply(NormalizedText.FromInput(text)).Text;

    /// <summary>Reads the <c>normalizer</c> element; null or absent gives null.</summary>
    /// <exception cref="CMoEFormatException">The type (or a setting of it) is not supported; the message names it.</exception>
    public static TextNormalizer? Read(JsonElement e, string path)
    {
        if (e.ValueKind != JsonValueKind.Object) return null;
        string type = HfJson.TypeOf(e);
        switch (type)
        {
            case "Sequence":
                var items = HfJson.Items(e, "normalizers").Select(n => Read(n, path)).OfType<TextNormalizer>().ToArray();
                return items.Length == 1 ? items[0] : new SequenceNormalizer(items);
            case "NFC": return new UnicodeNormalizer(NormalizationForm.FormC);
            case "NFD": return new UnicodeNormalizer(NormalizationForm.FormD);
            case "NFKC": return new UnicodeNormalizer(NormalizationForm.FormKC);
            case "NFKD": return new UnicodeNormalizer(NormalizationForm.FormKD);
            case "Prepend":
                return new PrependNormalizer(HfJson.String(e, "prepend") ?? throw HfJson.Unsupported(path, "normalizer", "Prepend without \"prepend\""));
            case "Replace":
                var (literal, regex) = HfJson.Pattern(e, path, "normalizer");
                return new ReplaceNormalizer(literal, regex, HfJson.String(e, "content") ?? "");
            default:
                throw HfJson.Unsupported(path, "normalizer", type);
        }
    }
}

/// <summary>Each normalizer in turn.</summary>
internal sealed class SequenceNormalizer(IReadOnlyList<TextNormalizer> items) : TextNormalizer
{
    public override NormalizedText Apply(NormalizedText text)
    {
        foreach (var n in items) text = n.Apply(text);
        return text;
    }
}

/// <summary>Unicode normalization of the piece (NFC for Qwen2).</summary>
internal sealed class UnicodeNormalizer(NormalizationForm form) : TextNormalizer
{
    public override NormalizedText Apply(NormalizedText text) => text.Transform(text.Text.Normalize(form));
}

/// <summary>HF <c>Prepend</c>: the string in front of a non-empty piece.</summary>
internal sealed class PrependNormalizer(string prefix) : TextNormalizer
{
    public override NormalizedText Apply(NormalizedText text) => text.Prepend(prefix);
}

/// <summary>HF <c>Replace</c>: every occurrence of a string, or every match of a regex, becomes the content.</summary>
internal sealed class ReplaceNormalizer(string? literal, Regex? regex, string content) : TextNormalizer
{
    public override NormalizedText Apply(NormalizedText text)
    {
        if (literal is not null) return text.Replace(literal, content);
        var matches = regex!.Matches(text.Text).Where(m => m.Length > 0).Select(m => (m.Index, m.Index + m.Length)).ToList();
        return matches.Count == 0 ? text : text.Replace(matches, content);
    }
}
