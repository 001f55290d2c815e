using System.Text.Json;

namespace CMoE.Modeling.Tokenization;

/// <summary>
/// What tokenizer.json's <c>post_processor</c> adds around a single text when Hugging Face encodes with
/// add_special_tokens: <c>TemplateProcessing</c>'s "single" template (special tokens before and after <c>$A</c>, their ids
/// from <c>special_tokens</c>); <c>ByteLevel</c> (offsets only) adds nothing; <c>Sequence</c> combines them.
/// </summary>
/// <param name="Prefix">Ids before the text (Llama's BOS).</param>
/// <param name="Suffix">Ids after the text (an EOS, when the template has one).</param>
internal sealed record PostTemplate(IReadOnlyList<int> Prefix, IReadOnlyList<int> Suffix)
{
    /// <summary>Adds nothing.</summary>
    public static readonly PostTemplate None = new([], []);

    /// <summary>Reads the <c>post_processor</c> element (null or absent: <see cref="None"/>).</summary>
    /// <param name="e">The element.</param>
    /// <param name="path">The file, for messages.</param>
    /// <param name="idOf">Token content to id (model vocabulary and added tokens), for templates without special_tokens ids.</param>
    /// <exception cref="CMoEFormatException">An unsupported type, or a template naming an unknown token.</exception>
    public static PostTemplate Read(JsonElement e, string path, IReadOnlyDictionary<string, int> idOf)
    {
        if (e.ValueKind != JsonValueKind.Object) return None;
        string type = HfJson.TypeOf(e);
        switch (type)
        {
            case "ByteLevel":
                return None;
            case "Sequence":
                var prefix = new List<int>();
                var suffix = new List<int>();
                foreach (var p in HfJson.Items(e, "processors"))
                {
                    var t = Read(p, path, idOf);
                    prefix.AddRange(t.Prefix);
                    suffix.AddRange(t.Suffix);
                }
                return new PostTemplate(prefix, suffix);
            case "TemplateProcessing":
                return ReadTemplate(e, path, idOf);
            default:
                throw HfJson.Unsupported(path, "post_processor", type);
        }
    }

    private static PostTemplate ReadTemplate(JsonElement e, string path, IReadOnlyDictionary<string, int> idOf)
    {
        var prefix = new List<int>();
        var suffix = new List<int>();
        bool seenSequence = false;
        if (!e.TryGetProperty("single", out var single) || single.ValueKind != JsonValueKind.Array)
            throw HfJson.Bad(path, "has a TemplateProcessing post_processor without a \"single\" template");
        foreach (var item in single.EnumerateArray())
        {
            if (item.TryGetProperty("Sequence", out _))
            {
                if (seenSequence) throw HfJson.Unsupported(path, "post_processor", "TemplateProcessing with $A twice in \"single\"");
                seenSequence = true;
                continue;
            }
            if (!item.TryGetProperty("SpecialToken", out var st) || HfJson.String(st, "id") is not { } name)
                throw HfJson.Bad(path, $"has a TemplateProcessing item that is neither Sequence nor SpecialToken: {item.GetRawText()}");
            (seenSequence ? suffix : prefix).AddRange(Ids(e, name, path, idOf));
        }
        return new PostTemplate(prefix, suffix);
    }

    /// <summary>special_tokens[name].ids, else the token's own id.</summary>
    private static IEnumerable<int> Ids(JsonElement template, string name, string path, IReadOnlyDictionary<string, int> idOf)
    {
        if (template.TryGetProperty("special_tokens", out var map) && map.ValueKind == JsonValueKind.Object
            && map.TryGetProperty(name, out var entry) && entry.TryGetProperty("ids", out var ids) && ids.ValueKind == JsonValueKind.Array)
            return ids.EnumerateArray().Select(i => i.GetInt32()).ToArray();
        return idOf.TryGetValue(name, out int id) ? [id]
            : throw HfJson.Bad(path, $"has a TemplateProcessing post_processor naming '{name}', which is neither in special_tokens nor in the vocabulary");
    }
}
