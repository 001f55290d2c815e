using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace CMoE.Modeling.Tokenization;

/// <summary>What <see cref="HfTokenizerJson.Load"/> read from a <c>tokenizer.json</c>.</summary>
/// <param name="Tokenizer">The Microsoft.ML tokenizer built from the file (adds no BOS/EOS itself).</param>
/// <param name="Vocabulary">Token string to id, model vocabulary and added tokens.</param>
/// <param name="VocabSize">One past the largest id.</param>
/// <param name="TemplateBos">The special token the post-processor puts in front of a single text, if any.</param>
internal sealed record HfTokenizerJsonResult(
    Tokenizer Tokenizer, IReadOnlyDictionary<string, int> Vocabulary, int VocabSize, string? TemplateBos);

/// <summary>
/// Reader of the Hugging Face <c>tokenizer.json</c> format (the file <c>tokenizers</c> saves), for the two
/// BPE families LLaMA-style checkpoints use:
/// (a) SentencePiece-style BPE with byte fallback (Llama-2, TinyLlama): normalizer <c>Prepend("▁")</c> +
///     <c>Replace(" ", "▁")</c> with no pre-tokenizer, or no normalizer and a <c>Metaspace</c> pre-tokenizer;
///     built as a <see cref="MetaspaceBpeTokenizer"/>;
/// (b) byte-level BPE (GPT-2, Llama-3, Qwen2): a <c>ByteLevel</c> pre-tokenizer, alone (GPT-2 regex) or after
///     a regex <c>Split</c>; built as a <see cref="ByteLevelBpeTokenizer"/> (the split regex through
///     <see cref="CodePointRegex"/>, so it matches code points as Rust's regex does; <c>ignore_merges</c> honoured).
/// Layout read: <c>model</c> {type, vocab {token: id}, merges ["a b" | ["a","b"]], byte_fallback, unk_token,
/// fuse_unk, ignore_merges}, <c>added_tokens</c> [{id, content, special}], <c>normalizer</c>,
/// <c>pre_tokenizer</c>, <c>decoder</c>, <c>post_processor</c> (TemplateProcessing gives the BOS).
/// </summary>
internal static class HfTokenizerJson
{
    /// <summary>The pre-tokenization regex of GPT-2, which HF's ByteLevel pre-tokenizer uses when use_regex is true.</summary>
    internal const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private const string Metaspace = "▁";

    /// <summary>Reads and builds the tokenizer; malformed or unsupported content throws <see cref="CMoEFormatException"/>.</summary>
    public static HfTokenizerJsonResult Load(string path)
    {
        JsonDocument doc;
        try
        {
            using var stream = File.OpenRead(path);
            doc = JsonDocument.Parse(stream, new JsonDocumentOptions { AllowTrailingCommas = true });
        }
        catch (JsonException ex)
        {
            throw Bad(path, $"is not valid JSON ({ex.Message})", ex);
        }
        using (doc)
        {
            return Build(path, doc.RootElement);
        }
    }

    private static HfTokenizerJsonResult Build(string path, JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw Bad(path, "has no \"model\" object; it is not a Hugging Face tokenizers file");

        string type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "BPE";
        if (type != "BPE")
        {
            throw new CMoEFormatException(
                $"{path}: tokenizer model type '{type}' is not supported; only BPE (SentencePiece-style with byte fallback, " +
                "or byte-level) is read from tokenizer.json. Put the model's tokenizer.model (SentencePiece) in the folder and " +
                "load it with TokenizerFile.SentencePieceModel.");
        }

        var modelVocab = ReadVocab(path, model);
        var merges = ReadMerges(path, model);
        var added = ReadAddedTokens(path, root);
        var vocab = new Dictionary<string, int>(modelVocab, StringComparer.Ordinal);
        foreach (var a in added) vocab[a.Content] = a.Id;
        int vocabSize = vocab.Count == 0 ? 0 : vocab.Values.Max() + 1;

        if (NonEmptyString(model, "continuing_subword_prefix") is not null || NonEmptyString(model, "end_of_word_suffix") is not null)
            throw Bad(path, "uses continuing_subword_prefix/end_of_word_suffix (a WordPiece-like BPE), which is not supported; use tokenizer.model");

        JsonElement pre = Get(root, "pre_tokenizer");
        JsonElement norm = Get(root, "normalizer");
        JsonElement dec = Get(root, "decoder");
        string? templateBos = ReadTemplateBos(Get(root, "post_processor"));

        Tokenizer tokenizer = FindByteLevel(pre, out var byteLevel)
            ? BuildByteLevel(path, model, modelVocab, merges, added, pre, byteLevel, norm)
            : BuildMetaspace(path, model, modelVocab, merges, added, pre, norm, dec);
        return new HfTokenizerJsonResult(tokenizer, vocab, vocabSize, templateBos);
    }

    // ---- family (a): SentencePiece-style ------------------------------------------------------------

    private static MetaspaceBpeTokenizer BuildMetaspace(string path, JsonElement model, Dictionary<string, int> vocab,
        List<(string, string)> merges, List<(string Content, int Id, bool Special)> added, JsonElement pre, JsonElement norm, JsonElement dec)
    {
        char? replacement = null;
        var prepend = MetaspacePrepend.Never;
        char prependChar = '▁';
        bool split = false;

        // Normalizer: null, or Prepend / Replace(" " -> "▁") alone or in a Sequence (legacy Llama-2).
        foreach (var n in Flatten(norm, "normalizers"))
        {
            switch (TypeOf(n))
            {
                case "Prepend":
                    string p = n.TryGetProperty("prepend", out var pp) ? pp.GetString() ?? "" : "";
                    if (p.Length != 1) throw Unsupported(path, "normalizer", $"Prepend(\"{p}\")");
                    prepend = MetaspacePrepend.Always;
                    prependChar = p[0];
                    break;
                case "Replace":
                    string from = n.TryGetProperty("pattern", out var pat) && pat.TryGetProperty("String", out var ps) ? ps.GetString() ?? "" : "";
                    string to = n.TryGetProperty("content", out var c) ? c.GetString() ?? "" : "";
                    if (from != " " || to.Length != 1) throw Unsupported(path, "normalizer", $"Replace(\"{from}\" -> \"{to}\")");
                    replacement = to[0];
                    break;
                default:
                    throw Unsupported(path, "normalizer", TypeOf(n));
            }
        }

        // Pre-tokenizer: null, or Metaspace (split false: the whole text is one word).
        foreach (var p in Flatten(pre, "pretokenizers"))
        {
            if (TypeOf(p) != "Metaspace") throw Unsupported(path, "pre_tokenizer", TypeOf(p));
            string r = p.TryGetProperty("replacement", out var re) ? re.GetString() ?? Metaspace : Metaspace;
            if (r.Length != 1) throw Unsupported(path, "pre_tokenizer", $"Metaspace(replacement \"{r}\")");
            replacement = r[0];
            prependChar = r[0];
            string scheme = p.TryGetProperty("prepend_scheme", out var ps) && ps.ValueKind == JsonValueKind.String ? ps.GetString()!
                : p.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.False ? "never" : "always";
            prepend = scheme switch
            {
                "always" => MetaspacePrepend.AlwaysUnlessPresent,
                "first" => MetaspacePrepend.FirstUnlessPresent,
                "never" => MetaspacePrepend.Never,
                _ => throw Unsupported(path, "pre_tokenizer", $"Metaspace(prepend_scheme \"{scheme}\")"),
            };
            split = !p.TryGetProperty("split", out var sp) || sp.ValueKind != JsonValueKind.False;
        }

        // Decoder: Replace("▁" -> " "), ByteFallback, Fuse, Strip(" ", start) or Metaspace; only what changes text matters.
        char? decodeReplacement = null;
        int strip = 0;
        foreach (var d in Flatten(dec, "decoders"))
        {
            switch (TypeOf(d))
            {
                case "Replace":
                    string from = d.TryGetProperty("pattern", out var pat) && pat.TryGetProperty("String", out var ps) ? ps.GetString() ?? "" : "";
                    if (from.Length == 1 && d.TryGetProperty("content", out var c) && c.GetString() == " ") decodeReplacement = from[0];
                    break;
                case "Strip":
                    if (d.TryGetProperty("content", out var sc) && sc.GetString() == " " && d.TryGetProperty("start", out var st))
                        strip = st.GetInt32();
                    break;
                case "Metaspace":
                    string r = d.TryGetProperty("replacement", out var re) ? re.GetString() ?? Metaspace : Metaspace;
                    decodeReplacement = r.Length == 1 ? r[0] : '▁';
                    bool never = d.TryGetProperty("prepend_scheme", out var psc) && psc.GetString() == "never"
                                 || d.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.False;
                    strip = never ? 0 : 1;
                    break;
            }
        }

        return new MetaspaceBpeTokenizer(new MetaspaceBpeSettings
        {
            SourcePath = path,
            Vocab = vocab,
            Merges = merges,
            AddedTokens = added,
            ByteFallback = Bool(model, "byte_fallback"),
            UnkToken = model.TryGetProperty("unk_token", out var unk) && unk.ValueKind == JsonValueKind.String ? unk.GetString() : null,
            FuseUnk = Bool(model, "fuse_unk"),
            IgnoreMerges = Bool(model, "ignore_merges"),
            SpaceReplacement = replacement,
            Prepend = prepend,
            PrependChar = prependChar,
            SplitOnReplacement = split,
            DecodeReplacement = decodeReplacement,
            DecodeStripLeading = strip,
        });
    }

    // ---- family (b): byte-level --------------------------------------------------------------------

    private static bool FindByteLevel(JsonElement pre, out JsonElement byteLevel)
    {
        foreach (var p in Flatten(pre, "pretokenizers"))
        {
            if (TypeOf(p) == "ByteLevel")
            {
                byteLevel = p;
                return true;
            }
        }
        byteLevel = default;
        return false;
    }

    private static ByteLevelBpeTokenizer BuildByteLevel(string path, JsonElement model, Dictionary<string, int> vocab, List<(string, string)> merges,
        List<(string Content, int Id, bool Special)> added, JsonElement pre, JsonElement byteLevel, JsonElement norm)
    {
        // The split regex: a Split(Regex, Isolated) in front of ByteLevel(use_regex: false) (Llama-3, Qwen2),
        // or ByteLevel's own GPT-2 regex (use_regex: true, the default).
        string? pattern = null;
        foreach (var p in Flatten(pre, "pretokenizers"))
        {
            switch (TypeOf(p))
            {
                case "ByteLevel":
                    if (!p.TryGetProperty("use_regex", out var ur) || ur.ValueKind != JsonValueKind.False)
                        pattern = pattern is null ? Gpt2Pattern : throw Unsupported(path, "pre_tokenizer", "two regex splits");
                    break;
                case "Split":
                    string behavior = p.TryGetProperty("behavior", out var b) ? b.GetString() ?? "" : "";
                    bool invert = p.TryGetProperty("invert", out var inv) && inv.ValueKind == JsonValueKind.True;
                    if (!p.TryGetProperty("pattern", out var pat) || !pat.TryGetProperty("Regex", out var rx) || behavior != "Isolated" || invert)
                        throw Unsupported(path, "pre_tokenizer", "Split other than (Regex, Isolated, invert false)");
                    pattern = pattern is null ? rx.GetString() : throw Unsupported(path, "pre_tokenizer", "two regex splits");
                    break;
                default:
                    throw Unsupported(path, "pre_tokenizer", TypeOf(p));
            }
        }

        bool addPrefixSpace = byteLevel.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.True;
        NormalizationForm? form = null;
        foreach (var n in Flatten(norm, "normalizers"))
        {
            form = TypeOf(n) switch
            {
                "NFC" => NormalizationForm.FormC,
                "NFD" => NormalizationForm.FormD,
                "NFKC" => NormalizationForm.FormKC,
                "NFKD" => NormalizationForm.FormKD,
                _ => throw Unsupported(path, "normalizer", TypeOf(n)),
            };
        }

        foreach (var (l, r) in merges)
            if (l.Contains(' ') || r.Contains(' '))
                throw Bad(path, $"has a byte-level merge with a literal space ('{l}' '{r}'), which byte-level BPE never produces");

        Regex? split = null;
        if (pattern is not null)
        {
            try
            {
                split = CodePointRegex.Create(pattern);
            }
            catch (ArgumentException ex)
            {
                throw Bad(path, $"has a pre-tokenizer regex .NET cannot compile ({ex.Message})", ex);
            }
        }
        return new ByteLevelBpeTokenizer(new ByteLevelBpeSettings
        {
            SourcePath = path,
            Vocab = vocab,
            Merges = merges,
            AddedTokens = added,
            Split = split,
            Normalization = form,
            AddPrefixSpace = addPrefixSpace,
            IgnoreMerges = Bool(model, "ignore_merges"),
            UnkToken = model.TryGetProperty("unk_token", out var unk) && unk.ValueKind == JsonValueKind.String ? unk.GetString() : null,
        });
    }

    // ---- common pieces -----------------------------------------------------------------------------

    private static Dictionary<string, int> ReadVocab(string path, JsonElement model)
    {
        if (!model.TryGetProperty("vocab", out var v) || v.ValueKind != JsonValueKind.Object)
            throw Bad(path, "has no \"model.vocab\" object (token -> id)");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var kv in v.EnumerateObject())
        {
            if (kv.Value.ValueKind != JsonValueKind.Number || !kv.Value.TryGetInt32(out int id) || id < 0)
                throw Bad(path, $"has a non-integer or negative id for token '{kv.Name}' in model.vocab");
            vocab[kv.Name] = id;
        }
        return vocab;
    }

    private static List<(string, string)> ReadMerges(string path, JsonElement model)
    {
        var merges = new List<(string, string)>();
        if (!model.TryGetProperty("merges", out var m) || m.ValueKind == JsonValueKind.Null) return merges;
        if (m.ValueKind != JsonValueKind.Array) throw Bad(path, "has a \"model.merges\" that is not an array");
        foreach (var e in m.EnumerateArray())
        {
            if (e.ValueKind == JsonValueKind.String)
            {
                string s = e.GetString()!;
                int space = s.IndexOf(' ', 1);
                if (space < 0 || space == s.Length - 1 || s.IndexOf(' ', space + 1) >= 0)
                    throw Bad(path, $"has the merge \"{s}\", which is not two tokens separated by one space");
                merges.Add((s[..space], s[(space + 1)..]));
            }
            else if (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() == 2
                     && e[0].ValueKind == JsonValueKind.String && e[1].ValueKind == JsonValueKind.String)
            {
                merges.Add((e[0].GetString()!, e[1].GetString()!));
            }
            else
            {
                throw Bad(path, $"has a merge that is neither \"a b\" nor [\"a\", \"b\"]: {e.GetRawText()}");
            }
        }
        return merges;
    }

    private static List<(string Content, int Id, bool Special)> ReadAddedTokens(string path, JsonElement root)
    {
        var added = new List<(string, int, bool)>();
        if (!root.TryGetProperty("added_tokens", out var a) || a.ValueKind == JsonValueKind.Null) return added;
        if (a.ValueKind != JsonValueKind.Array) throw Bad(path, "has an \"added_tokens\" that is not an array");
        foreach (var e in a.EnumerateArray())
        {
            if (!e.TryGetProperty("id", out var id) || !id.TryGetInt32(out int i) || !e.TryGetProperty("content", out var c) || c.ValueKind != JsonValueKind.String)
                throw Bad(path, $"has an added token without an integer \"id\" and a string \"content\": {e.GetRawText()}");
            added.Add((c.GetString()!, i, e.TryGetProperty("special", out var s) && s.ValueKind == JsonValueKind.True));
        }
        return added;
    }

    /// <summary>The first special token of TemplateProcessing's "single" template, when it comes before the text.</summary>
    private static string? ReadTemplateBos(JsonElement post)
    {
        foreach (var p in Flatten(post, "processors"))
        {
            if (TypeOf(p) != "TemplateProcessing" || !p.TryGetProperty("single", out var single) || single.ValueKind != JsonValueKind.Array)
                continue;
            foreach (var item in single.EnumerateArray())
            {
                if (item.TryGetProperty("Sequence", out _)) return null;
                if (item.TryGetProperty("SpecialToken", out var st) && st.TryGetProperty("id", out var id)) return id.GetString();
            }
        }
        return null;
    }

    /// <summary>The element itself, or the items of its Sequence; nothing for null/absent.</summary>
    private static IEnumerable<JsonElement> Flatten(JsonElement e, string listName)
    {
        if (e.ValueKind != JsonValueKind.Object) yield break;
        if (TypeOf(e) == "Sequence" && e.TryGetProperty(listName, out var list) && list.ValueKind == JsonValueKind.Array)
        {
            foreach (var item in list.EnumerateArray())
                foreach (var inner in Flatten(item, listName))
                    yield return inner;
        }
        else
        {
            yield return e;
        }
    }

    private static JsonElement Get(JsonElement root, string name) => root.TryGetProperty(name, out var v) ? v : default;

    private static string TypeOf(JsonElement e) => e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "(no type)";

    private static bool Bool(JsonElement e, string name) => e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.True;

    private static string? NonEmptyString(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String && v.GetString() is { Length: > 0 } s ? s : null;

    private static CMoEFormatException Bad(string path, string problem, Exception? inner = null)
    {
        string message = $"{path} {problem}. Re-download tokenizer.json from the model's Hugging Face repository, " +
                         "or load the folder's tokenizer.model instead (TokenizerFile.SentencePieceModel).";
        return inner is null ? new CMoEFormatException(message) : new CMoEFormatException(message, inner);
    }

    private static CMoEFormatException Unsupported(string path, string section, string what) =>
        new($"{path}: the {section} '{what}' is not supported (read: SentencePiece-style BPE with Prepend/Replace or " +
            "Metaspace, or byte-level BPE with ByteLevel and an optional regex Split). Load the folder's tokenizer.model " +
            "instead (TokenizerFile.SentencePieceModel).");
}
