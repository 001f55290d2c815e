using System.Text.Json;
using System.Text.RegularExpressions;

namespace CMoE.Modeling.Tokenization;

/// <summary>Small readers of tokenizer.json elements the component readers share, and their error messages.</summary>
internal static class HfJson
{
    /// <summary>The element's "type", or "(no type)".</summary>
    public static string TypeOf(JsonElement e) => e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "(no type)";

    /// <summary>The items of the array property <paramref name="list"/> (a Sequence's members); none when absent.</summary>
    public static IEnumerable<JsonElement> Items(JsonElement e, string list) =>
        e.TryGetProperty(list, out var l) && l.ValueKind == JsonValueKind.Array ? l.EnumerateArray() : [];

    public static string? String(JsonElement e, string name) => e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    public static bool Bool(JsonElement e, string name, bool absent = false) =>
        e.TryGetProperty(name, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : absent;

    public static int Int(JsonElement e, string name, int absent = 0) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : absent;

    /// <summary>A <c>"pattern": {"String": ...}</c> or <c>{"Regex": ...}</c>; the regex matches code points (<see cref="CodePointRegex"/>).</summary>
    public static (string? Literal, Regex? Regex) Pattern(JsonElement e, string path, string section)
    {
        if (e.TryGetProperty("pattern", out var p) && p.ValueKind == JsonValueKind.Object)
        {
            if (String(p, "String") is { } s) return (s, null);
            if (String(p, "Regex") is { } r)
            {
                try
                {
                    return (null, CodePointRegex.Create(r));
                }
                catch (ArgumentException ex)
                {
                    throw Bad(path, $"has a {section} regex .NET cannot compile ({ex.Message})", ex);
                }
            }
        }
        throw Unsupported(path, section, $"{TypeOf(e)} without a String or Regex pattern");
    }

    /// <summary>Malformed content: names the problem and says to re-download or use tokenizer.model.</summary>
    public static CMoEFormatException Bad(string path, string problem, Exception? inner = null)
    {
        string message = $"{path} {problem}. Re-download tokenizer.json from the model's Hugging Face repository, " +
                         "or load the folder's tokenizer.model instead (TokenizerFile.SentencePieceModel).";
        return inner is null ? new CMoEFormatException(message) : new CMoEFormatException(message, inner);
    }

    /// <summary>A component type or setting we do not implement: names it and the way out.</summary>
    public static CMoEFormatException Unsupported(string path, string section, string what) =>
        new($"{path}: the {section} '{what}' is not supported (read: BPE models; normalizers NFC/NFD/NFKC/NFKD, " +
            "Prepend, Replace, Sequence; pre-tokenizers ByteLevel, Split, Digits, Metaspace, Sequence; post-processors TemplateProcessing, " +
            "ByteLevel, Sequence; decoders ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence). Load the folder's " +
            "tokenizer.model instead (TokenizerFile.SentencePieceModel), or open an issue naming the model.");
}
