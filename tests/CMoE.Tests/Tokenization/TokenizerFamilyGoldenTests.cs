using System.IO.Compression;
using System.Text.Json;
using CMoE.Modeling.Tokenization;

namespace CMoE.Tests.Tokenization;

/// <summary>
/// Each tokenizer family's tokenizer.json structure against Hugging Face <c>tokenizers</c> 0.23.2, the reference, first
/// SentencePiece-style BPE with byte fallback (Llama-2, Mistral, Phi-3, Gemma, older Metaspace conversions). Real Llama-2/Gemma files may not be vendored, so <c>Golden/generate.mjs</c>
/// (mode <c>sentencepiece</c>) trains one small BPE (1,500 merges on sotu_train plus the hard cases, a character alphabet
/// with everything else through &lt;0xXX&gt;) and writes it in each family's tokenizer.json structure:
/// llama2 (Prepend+Replace normalizer, no pre-tokenizer, Replace/ByteFallback/Fuse/Strip decoder, &lt;s&gt; $A),
/// mistral (Metaspace prepend_scheme first, split false; [INST] control tokens), phi3 (legacy layout, rstrip chat tokens,
/// plus an lstrip+rstrip special and a single_word added token; BOS and EOS in the template), gemma (Replace-only normalizer,
/// Split " " MergedWithPrevious, no Strip, fuse_unk with a few byte tokens left out, non-special and normalized added
/// tokens), metaspace (Metaspace prepend_scheme always, split true, Metaspace decoder) and misc (component coverage:
/// NFKC and a regex Replace, Digits runs, Split MergedWithNext/MergedWithPrevious/Removed, BOS+EOS in a Sequence post-processor).
/// Golden/golden-sp-{variant}.json.gz hold the reference ids of hard cases (also with add_special_tokens) and their decoded
/// text, 5,000 seeded fuzz strings (astral letters and digits, emoji, CJK, "▁", fragments of special tokens), the sotu_val
/// lines (all 15: whole speeches, ~36k chars each), 8 passages of 4,500 chars with line breaks (with add_special_tokens) and every vocabulary entry decoded and re-encoded.
/// The same checks run on three byte-level chat variants of
/// <see cref="ByteLevelGoldenTests"/>' BPE (mode <c>chat</c>): qwen3 (Qwen2's file with &lt;|im_start|&gt; &lt;|im_end|&gt;
/// &lt;|endoftext|&gt; and the non-special &lt;think&gt; &lt;/think&gt;) and llama31 (Llama-3's file with the header and eot
/// tokens and Llama-3.1's Sequence[ByteLevel, TemplateProcessing] post-processor) and smollm (GPT-2's file with SmolLM's
/// Digits + ByteLevel pre-tokenizer and chat tokens). The bar is 100% identical ids.
/// </summary>
public sealed class TokenizerFamilyGoldenTests
{
    // "sp-x": SentencePiece-style variant x; "bl-x": byte-level chat variant x (Golden/golden-{sp|bl}-x.json.gz, synthetic-x.tokenizer.json).
    private static readonly string[] Names = ["sp-llama2", "sp-mistral", "sp-phi3", "sp-gemma", "sp-metaspace", "sp-misc", "bl-qwen3", "bl-llama31", "bl-smollm"];

    public static TheoryData<string> Variants => new(Names);

    private static readonly Dictionary<string, Lazy<(TextTokenizer Tok, JsonDocument Golden)>> Cache = Names.ToDictionary(v => v, v => new Lazy<(TextTokenizer, JsonDocument)>(() => (Load(v), ReadGolden(v))));

    private static string GoldenPath(string name) => Path.Combine(TestPaths.RepoRoot, "tests", "CMoE.Tests", "Tokenization", "Golden", name);

    private static TextTokenizer Load(string variant)
    {
        using var dir = new TempFolder();
        File.Copy(GoldenPath($"synthetic-{variant[3..]}.tokenizer.json"), Path.Combine(dir.Path, "tokenizer.json"));
        return TokenizerLoader.FromFolder(dir.Path, TokenizerFile.TokenizerJson);
    }

    private static JsonDocument ReadGolden(string variant)
    {
        using var gz = new GZipStream(File.OpenRead(GoldenPath($"golden-{variant}.json.gz")), CompressionMode.Decompress);
        return JsonDocument.Parse(gz);
    }

    private static int[] Ids(string spaced) => spaced.Length == 0 ? [] : spaced.Split(' ').Select(int.Parse).ToArray();

    private static string[] Strings(JsonElement g, string name) => g.GetProperty(name).EnumerateArray().Select(e => e.GetString()!).ToArray();

    private static string Show(string s) => JsonSerializer.Serialize(s);

    [Theory]
    [MemberData(nameof(Variants))]
    public void HardCasesAndSpecialTokensInText_MatchReference_PlainAndWithSpecialTokens(string variant)
    {
        var (tok, doc) = Cache[variant].Value;
        var g = doc.RootElement;
        string[] texts = Strings(g, "hard"), plain = Strings(g, "hardIds"), special = Strings(g, "hardSpecialIds");
        string[] decoded = Strings(g, "hardDecoded"), decodedKeep = Strings(g, "hardDecodedKeepSpecial");
        var hf = (HfTokenizer)tok.Inner;
        var bad = new List<string>();
        for (int i = 0; i < texts.Length; i++)
        {
            int[] ours = tok.Encode(texts[i], addBos: false);
            if (!ours.SequenceEqual(Ids(plain[i]))) bad.Add($"{Show(texts[i])}: ours [{string.Join(' ', ours)}], reference [{plain[i]}]");
            int[] withSpecial = tok.Encode(texts[i], addBos: true, addEos: tok.AddEosToken);
            if (!withSpecial.SequenceEqual(Ids(special[i]))) bad.Add($"{Show(texts[i])} with specials: ours [{string.Join(' ', withSpecial)}], reference [{special[i]}]");
            if (tok.Decode(ours) != decoded[i]) bad.Add($"{Show(texts[i])}: decoded {Show(tok.Decode(ours))}, reference {Show(decoded[i])}");
            if (hf.Decode(ours, considerSpecialTokens: true) != decodedKeep[i])
                bad.Add($"{Show(texts[i])}: decoded with specials {Show(hf.Decode(ours, true))}, reference {Show(decodedKeep[i])}");
        }
        texts.Length.Should().BeGreaterThan(45);
        bad.Should().BeEmpty();
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void FuzzStrings_AllIdsMatchReference_AndRoundTripWhereTheReferenceDoes(string variant)
    {
        var (tok, doc) = Cache[variant].Value;
        var g = doc.RootElement;
        string[] fuzz = Strings(g, "fuzz"), ids = Strings(g, "fuzzIds");
        int[] roundtrip = g.GetProperty("fuzzRoundtrip").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        fuzz.Length.Should().Be(5000);
        fuzz.Count(s => s.Any(char.IsSurrogate)).Should().BeGreaterThan(1000, "the fuzz strings exercise astral characters");
        var bad = new List<string>();
        for (int i = 0; i < fuzz.Length; i++)
        {
            int[] ours = tok.Encode(fuzz[i], addBos: false);
            if (!ours.SequenceEqual(Ids(ids[i]))) bad.Add($"{Show(fuzz[i])}: ours [{string.Join(' ', ours)}], reference [{ids[i]}]");
            else if ((tok.Decode(ours) == fuzz[i]) != (roundtrip[i] == 1)) bad.Add($"{Show(fuzz[i])}: round trip {tok.Decode(ours) == fuzz[i]}, reference {roundtrip[i] == 1}");
        }
        bad.Should().BeEmpty($"all 5,000 seeded strings must match ({bad.Count} differ; first: {string.Join(" | ", bad.Take(3))})");
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void EveryVocabularyEntry_DecodedAndReencoded_MatchesReference(string variant)
    {
        var (tok, doc) = Cache[variant].Value;
        var bad = new List<string>();
        int n = 0;
        foreach (var row in doc.RootElement.GetProperty("vocab").EnumerateArray())
        {
            int id = row[0].GetInt32();
            string text = tok.Decode([id]);
            int[] ours = tok.Encode(text, addBos: false);
            if (!ours.SequenceEqual(Ids(row[1].GetString()!))) bad.Add($"{id} {Show(text)}: [{string.Join(' ', ours)}] vs [{row[1].GetString()}]");
            n++;
        }
        n.Should().BeGreaterThan(1500);
        bad.Should().BeEmpty();
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void WholePassages_WithSpecialTokens_MatchReference(string variant)
    {
        var (tok, doc) = Cache[variant].Value;
        var g = doc.RootElement;
        string[] paragraphs = Strings(g, "paragraphs"), ids = Strings(g, "paragraphIds");
        paragraphs.Should().HaveCount(8);
        paragraphs.Should().OnlyContain(p => p.Length > 4000);
        paragraphs.Count(p => p.Contains("\n\n", StringComparison.Ordinal)).Should().Be(8);
        for (int i = 0; i < paragraphs.Length; i++)
        {
            int[] ours = tok.Encode(paragraphs[i], addBos: true, addEos: tok.AddEosToken);
            ours.Should().Equal(Ids(ids[i]), $"passage {i} of {variant}");
        }
    }

    [SharedTheory]
    [MemberData(nameof(Variants))]
    public void SotuValLines_MatchReference(string variant)
    {
        var (tok, doc) = Cache[variant].Value;
        var g = doc.RootElement;
        int count = g.GetProperty("corpusLines").GetInt32();
        var lines = File.ReadAllText(TestPaths.InShared("data", "eval", "sotu_val.txt"), System.Text.Encoding.UTF8)
            .Split('\n').Where(l => l.Length > 0).Take(count).ToArray();
        string[] ids = Strings(g, "corpusIds");
        var bad = lines.Select((l, i) => (l, i)).Where(x => !tok.Encode(x.l, addBos: false).SequenceEqual(Ids(ids[x.i]))).Select(x => Show(x.l)).ToList();
        bad.Should().BeEmpty();
    }
}
