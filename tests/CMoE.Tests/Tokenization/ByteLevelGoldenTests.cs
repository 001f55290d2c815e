using System.IO.Compression;
using System.Text.Json;
using CMoE.Modeling.Tokenization;

namespace CMoE.Tests.Tokenization;

/// <summary>
/// Byte-level BPE (GPT-2, Llama-3, Qwen2 styles) against Hugging Face <c>tokenizers</c> 0.23.2, the reference.
/// No Llama-3 tokenizer file could be vendored (its license does not allow it), so <c>Golden/generate.mjs</c> trains a
/// small byte-level BPE (1,800 merges on sotu_train.txt plus the hard cases, and a few whole-word entries no merge
/// produces, as in Llama-3's vocabulary) and writes it in three variants: Llama-3 (its split regex, ignore_merges,
/// a BOS template), Qwen2 (its regex, one digit per word, NFC) and GPT-2 (ByteLevel's own regex). The reference ids of
/// hard cases, 5,000 seeded fuzz strings (astral letters/digits, emoji, CJK, Vietnamese, Turkish, contractions,
/// mixed whitespace), the 15 sotu_val lines (whole speeches, ~36k chars each) and every vocabulary entry decoded and re-encoded are in
/// Golden/golden-bytelevel-{variant}.json.gz.
/// The bar is 100% identical ids.
/// </summary>
public sealed class ByteLevelGoldenTests
{
    private static readonly Dictionary<string, Lazy<JsonDocument>> Goldens = new[] { "llama3", "qwen2", "gpt2" }
        .ToDictionary(n => n, n => new Lazy<JsonDocument>(() =>
        {
            using var gz = new GZipStream(File.OpenRead(GoldenPath($"golden-bytelevel-{n}.json.gz")), CompressionMode.Decompress);
            return JsonDocument.Parse(gz);
        }));

    private static readonly Dictionary<string, Lazy<TextTokenizer>> Tokenizers = new[] { "llama3", "qwen2", "gpt2" }
        .ToDictionary(n => n, n => new Lazy<TextTokenizer>(() => Load(n)));

    public static TheoryData<string> Variants => new() { "llama3", "qwen2", "gpt2" };

    private static string GoldenPath(string name) => Path.Combine(TestPaths.RepoRoot, "tests", "CMoE.Tests", "Tokenization", "Golden", name);

    private static TextTokenizer Load(string variant)
    {
        using var dir = new TempFolder();
        File.Copy(GoldenPath($"synthetic-{variant}.tokenizer.json"), Path.Combine(dir.Path, "tokenizer.json"));
        return TokenizerLoader.FromFolder(dir.Path, TokenizerFile.TokenizerJson);
    }

    /// <summary>The variant's golden file: the shared texts (hard, fuzz, corpusLines) and its reference ids ("tokenizer").</summary>
    private static JsonElement Root(string variant) => Goldens[variant].Value.RootElement;

    private static JsonElement Reference(string variant) => Root(variant).GetProperty("tokenizer");

    private static int[] Ids(string spaced) => spaced.Length == 0 ? [] : spaced.Split(' ').Select(int.Parse).ToArray();

    private static int[] Ids(JsonElement e) => e.ValueKind == JsonValueKind.String ? Ids(e.GetString()!) : e.EnumerateArray().Select(x => x.GetInt32()).ToArray();

    /// <summary>Encodes each text and compares; returns the mismatches (text, ours, reference), and checks the round trips.</summary>
    private static List<string> Compare(TextTokenizer tok, JsonElement texts, JsonElement ids, JsonElement? roundtrip)
    {
        var bad = new List<string>();
        var textList = texts.EnumerateArray().Select(t => t.GetString()!).ToList();
        var idList = ids.EnumerateArray().ToList();
        var rt = roundtrip?.EnumerateArray().Select(r => r.ValueKind == JsonValueKind.True || r.ValueKind == JsonValueKind.Number && r.GetInt32() == 1).ToList();
        idList.Should().HaveCount(textList.Count);
        for (int i = 0; i < textList.Count; i++)
        {
            int[] ours = tok.Encode(textList[i], addBos: false);
            int[] reference = Ids(idList[i]);
            if (!ours.SequenceEqual(reference))
                bad.Add($"{JsonSerializer.Serialize(textList[i])}: ours [{string.Join(' ', ours)}], reference [{string.Join(' ', reference)}]");
            else if (rt is not null && rt[i] && tok.Decode(ours) != textList[i])
                bad.Add($"{JsonSerializer.Serialize(textList[i])}: decode(encode(t)) is {JsonSerializer.Serialize(tok.Decode(ours))}");
        }
        return bad;
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void HardCases_MatchReference(string variant)
    {
        var root = Root(variant);
        var r = Reference(variant);
        var bad = Compare(Tokenizers[variant].Value, root.GetProperty("hard"), r.GetProperty("hard"), r.GetProperty("hardRoundtrip"));
        bad.Should().BeEmpty();
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void FuzzStrings_AllIdsMatchReference(string variant)
    {
        var root = Root(variant);
        var r = Reference(variant);
        root.GetProperty("fuzz").GetArrayLength().Should().Be(5000);
        var bad = Compare(Tokenizers[variant].Value, root.GetProperty("fuzz"), r.GetProperty("fuzz"), r.GetProperty("fuzzRoundtrip"));
        bad.Should().BeEmpty($"all 5,000 seeded strings must match ({bad.Count} differ; first: {string.Join(" | ", bad.Take(3))})");
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void EveryVocabularyEntry_DecodedAndReencoded_MatchesReference(string variant)
    {
        var tok = Tokenizers[variant].Value;
        var bad = new List<string>();
        int n = 0;
        foreach (var row in Reference(variant).GetProperty("vocab").EnumerateArray())
        {
            int id = row[0].GetInt32();
            string text = tok.Decode([id]);
            int[] ours = tok.Encode(text, addBos: false);
            if (!ours.SequenceEqual(Ids(row[1].GetString()!))) bad.Add($"{id} {JsonSerializer.Serialize(text)}: [{string.Join(' ', ours)}] vs [{row[1].GetString()}]");
            n++;
        }
        n.Should().BeGreaterThan(1800);
        bad.Should().BeEmpty();
    }

    [SharedTheory]
    [MemberData(nameof(Variants))]
    public void SotuValLines_MatchReference(string variant)
    {
        int count = Root(variant).GetProperty("corpusLines").GetInt32();
        var lines = File.ReadAllText(TestPaths.InShared("data", "eval", "sotu_val.txt"), System.Text.Encoding.UTF8)
            .Split('\n').Where(l => l.Length > 0).Take(count).ToArray();
        var texts = JsonSerializer.SerializeToElement(lines);
        var bad = Compare(Tokenizers[variant].Value, texts, Reference(variant).GetProperty("corpus"), roundtrip: null);
        bad.Should().BeEmpty();
    }

    [Fact]
    public void Llama3_IgnoreMerges_WholeWordEntryWins_AndTemplateAddsBos()
    {
        var tok = Tokenizers["llama3"].Value;
        var root = Root("llama3");
        var hard = root.GetProperty("hard").EnumerateArray().Select(h => h.GetString()).ToList();
        var reference = Reference("llama3");
        // " İstanbul" and "😀😃" are vocabulary entries that no merge sequence builds: only ignore_merges finds them
        // (reference: llama3 [2056] and [2057]; qwen2, same vocabulary without ignore_merges, 4 tokens each).
        var vocab = JsonDocument.Parse(File.ReadAllText(GoldenPath("synthetic-llama3.tokenizer.json"))).RootElement.GetProperty("model").GetProperty("vocab");
        string key = new(System.Text.Encoding.UTF8.GetBytes(" İstanbul").Select(b => ByteLevelAlphabet.ByteToChar[b]).ToArray());
        int whole = vocab.GetProperty(key).GetInt32();
        tok.Encode(" İstanbul", addBos: false).Should().Equal(whole);
        tok.Encode("😀😃", addBos: false).Should().Equal(2057);
        Tokenizers["qwen2"].Value.Encode(" İstanbul", addBos: false).Should().Equal(1501, 108, 1448, 1441);
        tok.Encode("Hello world").Should().Equal(Ids(reference.GetProperty("withBos")));
        hard.Should().Contain(" việc");
    }

    [Fact]
    public void CodePointRegex_SplitsAstralLettersAndDigitsAsTheReferenceDoes()
    {
        const string llama3 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        var regex = CodePointRegex.Create(llama3);
        string[] Split(string s) => regex.Matches(s).Select(m => m.Value).ToArray();
        Split("x𝐱y 𠮷野").Should().Equal("x𝐱y", " 𠮷野");
        Split("𝟙𝟚𝟛𝟘12").Should().Equal("𝟙𝟚𝟛", "𝟘12");
        Split("😀a").Should().Equal("😀a");
        Split("IT'S ok").Should().Equal("IT", "'S", " ok");
        Split("a  \n b").Should().Equal("a", "  \n", " b");
    }
}
