using System.Text.Json.Nodes;
using CMoE.Modeling.Tokenization;

namespace CMoE.Tests.Tokenization;

/// <summary>The tokenizer.json reader on small hand-written files and on variants of tinyref's file.</summary>
public sealed class HfTokenizerJsonTests(TinyrefTokenizers tokenizers) : IClassFixture<TinyrefTokenizers>
{
    private static readonly string[] ByteLevelSymbols = ["h", "e", "l", "o", "w", "r", "d", "Ġ", "Ã", "©", "!"];

    private static readonly (string, string)[] ByteLevelMerges =
    [
        ("h", "e"), ("l", "l"), ("ll", "o"), ("he", "llo"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld"), ("Ã", "©"),
    ];

    /// <summary>A GPT-2-style byte-level BPE: vocab = the symbols, then each merge's result, in order.</summary>
    private static JsonObject ByteLevelJson(JsonNode preTokenizer, JsonNode? postProcessor)
    {
        var vocab = new JsonObject();
        foreach (string s in ByteLevelSymbols) vocab[s] = vocab.Count;
        foreach (var (l, r) in ByteLevelMerges) vocab[l + r] = vocab.Count;
        var merges = new JsonArray(ByteLevelMerges.Select(m => (JsonNode)new JsonArray(m.Item1, m.Item2)).ToArray());
        return new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(
                new JsonObject { ["id"] = 100, ["content"] = "<|endoftext|>", ["special"] = true },
                new JsonObject { ["id"] = 101, ["content"] = "<|begin_of_text|>", ["special"] = true }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = preTokenizer,
            ["post_processor"] = postProcessor,
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel" },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["byte_fallback"] = false,
                ["vocab"] = vocab, ["merges"] = merges,
            },
        };
    }

    private static int Id(string token)
    {
        int i = Array.IndexOf(ByteLevelSymbols, token);
        return i >= 0 ? i : ByteLevelSymbols.Length + Array.FindIndex(ByteLevelMerges, m => m.Item1 + m.Item2 == token);
    }

    [Fact]
    public void ByteLevelBpe_Gpt2Style_LoadsAndEncodes()
    {
        using var dir = new TempFolder();
        var pre = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true };
        dir.Write("tokenizer.json", ByteLevelJson(pre, new JsonObject { ["type"] = "ByteLevel" }).ToJsonString());
        dir.Write("tokenizer_config.json", """{"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>", "special": true}}""");

        var tok = TokenizerLoader.FromFolder(dir.Path);
        tok.Source.Should().Be("tokenizer.json");
        tok.BosId.Should().Be(100);
        tok.EosId.Should().Be(100);
        tok.AddBosToken.Should().BeFalse("GPT-2's post-processor adds no BOS and tokenizer_config does not ask for one");
        tok.VocabSize.Should().Be(102);

        tok.Encode("hello world").Should().Equal(Id("hello"), Id("Ġworld"));
        tok.Encode("héllo!", addEos: true).Should().Equal(Id("h"), Id("Ã©"), Id("llo"), Id("!"), 100);
        tok.Encode("hello<|endoftext|>world").Should().Equal(Id("hello"), 100, Id("w"), Id("or"), Id("ld"));
        tok.Decode(tok.Encode("hello world héllo")).Should().Be("hello world héllo");
        tok.Decode([Id("hello"), 100]).Should().Be("hello");
    }

    [Fact]
    public void ByteLevelBpe_Llama3Style_SplitRegexAndTemplateBos()
    {
        using var dir = new TempFolder();
        const string llama3 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        var pre = new JsonObject
        {
            ["type"] = "Sequence",
            ["pretokenizers"] = new JsonArray(
                new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = llama3 }, ["behavior"] = "Isolated", ["invert"] = false },
                new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false }),
        };
        var post = JsonNode.Parse("""
            {"type": "Sequence", "processors": [
              {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
              {"type": "TemplateProcessing",
               "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
               "pair": [], "special_tokens": {}}]}
            """);
        dir.Write("tokenizer.json", ByteLevelJson(pre, post).ToJsonString());
        dir.Write("config.json", """{"bos_token_id": 101, "eos_token_id": [100, 101]}""");

        var tok = TokenizerLoader.FromFolder(dir.Path, TokenizerFile.Auto);
        tok.BosId.Should().Be(101);
        tok.EosId.Should().Be(100);
        tok.AddBosToken.Should().BeTrue("the TemplateProcessing post-processor puts <|begin_of_text|> first");
        tok.Encode("hello world").Should().Equal(101, Id("hello"), Id("Ġworld"));
    }

    [Fact]
    public void LegacyLlama2Json_PrependReplaceNormalizer_StringMerges_MatchesTokenizerModel()
    {
        var root = JsonNode.Parse(File.ReadAllText(Path.Combine(TinyrefTokenizers.Folder, "tokenizer.json")))!.AsObject();
        root["normalizer"] = JsonNode.Parse("""
            {"type": "Sequence", "normalizers": [
              {"type": "Prepend", "prepend": "▁"},
              {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
            """);
        root["pre_tokenizer"] = null;
        var model = root["model"]!.AsObject();
        model["merges"] = new JsonArray(model["merges"]!.AsArray().Select(m => (JsonNode?)JsonValue.Create($"{m![0]} {m[1]}")).ToArray());
        using var dir = new TempFolder();
        dir.Write("tokenizer.json", root.ToJsonString());
        File.Copy(Path.Combine(TinyrefTokenizers.Folder, "tokenizer_config.json"), Path.Combine(dir.Path, "tokenizer_config.json"));

        var legacy = TokenizerLoader.FromFolder(dir.Path);
        // (Not compared: text right after a special token, where HF's legacy Prepend adds a "▁" and LlamaTokenizer does not.)
        foreach (string probe in new[] { "Hello world", " leading space", "emoji 😀 and 日本語", "a  b\n\nc", "<s>x" })
        {
            legacy.Encode(probe).Should().Equal(tokenizers.SentencePiece.Encode(probe), probe);
            legacy.Decode(legacy.Encode(probe)).Should().Be(tokenizers.SentencePiece.Decode(tokenizers.SentencePiece.Encode(probe)));
        }
    }

    [Fact]
    public void MetaspaceFirst_DoesNotDoubleALeadingSpace_AsHuggingFaceDoes()
    {
        // HF's Metaspace replaces spaces, then prepends "▁" only when the text does not already start with one;
        // SentencePiece (tokenizer.model) always adds its dummy prefix. tinyref's tokenizer.json is the former.
        tokenizers.Json.Encode(" hello").Should().Equal(tokenizers.Json.Encode("hello"));
        tokenizers.SentencePiece.Encode(" hello").Should().NotEqual(tokenizers.SentencePiece.Encode("hello"));
    }
}
