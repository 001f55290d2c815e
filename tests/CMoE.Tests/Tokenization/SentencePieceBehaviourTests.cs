using System.Text.Json.Nodes;
using CMoE.Modeling.Tokenization;

namespace CMoE.Tests.Tokenization;

/// <summary>
/// The added-token flags, prepend schemes and BOS/EOS rules one by one, on the synthetic SentencePiece-style files of
/// <c>Golden/</c>; every expected id here is Hugging Face tokenizers 0.23.2's (see generate.mjs).
/// </summary>
public sealed class SentencePieceBehaviourTests
{
    private static string GoldenPath(string name) => Path.Combine(TestPaths.RepoRoot, "tests", "CMoE.Tests", "Tokenization", "Golden", name);

    private static TextTokenizer Load(string variant, string? tokenizerConfig = null, Action<JsonObject>? edit = null)
    {
        using var dir = new TempFolder();
        var json = JsonNode.Parse(File.ReadAllText(GoldenPath($"synthetic-{variant}.tokenizer.json")))!.AsObject();
        edit?.Invoke(json);
        dir.Write("tokenizer.json", json.ToJsonString());
        if (tokenizerConfig is not null) dir.Write("tokenizer_config.json", tokenizerConfig);
        return TokenizerLoader.FromFolder(dir.Path, TokenizerFile.TokenizerJson);
    }

    [Fact]
    public void Phi3_RStripTokensTakeTheWhitespaceAfterThem_LStripTheWhitespaceBefore()
    {
        var tok = Load("phi3");
        // "<|user|>\n  " and "<|end|>\n" are single tokens (rstrip), the text after gets the legacy "▁" prefix.
        tok.Encode("<|user|>\n  Hi<|end|>\n<|assistant|>", addBos: false).Should().Equal(1835, 510, 302, 1834, 1832);
        tok.Encode("a  <|tool|>  b", addBos: false).Should().Equal(330, 1836, 345);
    }

    [Fact]
    public void Phi3_SingleWordTokenOnlyAsAWholeWord_TemplateAddsBosAndEos()
    {
        var tok = Load("phi3");
        tok.AddBosToken.Should().BeTrue();
        tok.AddEosToken.Should().BeTrue("the template ends with <|endoftext|>");
        tok.Encode("the cat sat", addBos: true, addEos: tok.AddEosToken).Should().Equal(1, 332, 322, 1837, 322, 750, 1831);
        tok.Encode("concatenate cat", addBos: false).Should().Equal(737, 338, 781, 322, 1837);
    }

    [Fact]
    public void Gemma_NormalizedAddedTokenMatchesAfterReplace_NonSpecialNewlinesAreTokens()
    {
        var tok = Load("gemma");
        tok.Encode("I love New York").Should().Equal(2, 286, 977, 381, 325, 1834);
        tok.Encode("x\n\ny 𝐱", addBos: false).Should().Equal(320, 8, 321, 325, 328);
        tok.Decode([8, 1834]).Should().Be("\n\nNew York", "non-special added tokens are decoded, the ▁ inside one becomes a space");
    }

    [Fact]
    public void LegacyPrependAfterSpecialToken_MetaspaceFirstDoesNot()
    {
        Load("llama2").Encode("Hello<s>world", addBos: false).Should().Equal(831, 1, 847);
        var mistral = Load("mistral");
        mistral.Encode("Hello[INST]world", addBos: false).Should().Equal(833, 3, 318, 356, 456);
        mistral.Encode(" Hello", addBos: false).Should().Equal(833);
        Load("metaspace").Encode("a  b", addBos: false).Should().Equal(330, 322, 345);
    }

    [Fact]
    public void TokenizerConfigAddBosAndAddEos_OverrideTheTemplate_AsLlamaTokenizerFastDoes()
    {
        var none = Load("llama2", """{"add_bos_token": false, "add_eos_token": false}""");
        none.Encode("Hello", addBos: true, addEos: none.AddEosToken).Should().Equal(831);
        var both = Load("llama2", """{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true, "add_eos_token": true}""");
        both.AddEosToken.Should().BeTrue();
        both.Encode("Hello", addBos: true, addEos: both.AddEosToken).Should().Equal(1, 831, 2);
    }

    [Fact]
    public void Decoding_InvalidByteRunsGiveOneReplacementPerByte_MetaspaceDropsTheReplacementInTheFirstToken()
    {
        // Reference (HF tokenizers 0.23.2, probed): ByteFallback turns an invalid run into one U+FFFD per byte;
        // the Metaspace decoder drops every "▁" of the first token, and "<s>" kept counts as that first token.
        var llama2 = Load("llama2");
        var v = ((HfTokenizer)llama2.Inner).Vocabulary;
        llama2.Decode([v["<0xE6>"], v["<0xE6>"], v["▁a"]]).Should().Be("\uFFFD\uFFFD a");
        llama2.Decode([v["<0xE6>"], v["<0x97>"], v["<0xA5>"]]).Should().Be("日");
        var ms = Load("metaspace");
        var mv = ((HfTokenizer)ms.Inner).Vocabulary;
        ms.Decode([mv["▁▁"], mv["▁a"]]).Should().Be(" a");
        ((HfTokenizer)ms.Inner).Decode([mv["<s>"], mv["▁a"], mv["▁a"]], considerSpecialTokens: true).Should().Be("<s> a a");
    }

    [Fact]
    public void StripDecoder_StopStripsTheEnd_AndAnEmptyTokenStaysEmpty()
    {
        // (HF tokenizers 0.23.2 panics on an empty token with stop > 0, strip.rs:47; we return it empty.)
        new StripDecoder(' ', 1, 1).DecodeChain(["  a  ", "", " "]).Should().Equal(" a ", "", "");
    }

    [Theory]
    [InlineData("normalizer", """{"type": "BertNormalizer"}""", "normalizer 'BertNormalizer' is not supported")]
    [InlineData("pre_tokenizer", """{"type": "Whitespace"}""", "pre_tokenizer 'Whitespace' is not supported")]
    [InlineData("decoder", """{"type": "WordPiece"}""", "decoder 'WordPiece' is not supported")]
    [InlineData("post_processor", """{"type": "RobertaProcessing"}""", "post_processor 'RobertaProcessing' is not supported")]
    [InlineData("pre_tokenizer", """{"type": "Split", "pattern": {"String": " "}, "behavior": "Contiguous", "invert": false}""", "Split behavior 'Contiguous'")]
    public void UnknownComponent_FailsNamingTheTypeAndTheWayOut(string section, string json, string expected)
    {
        var act = () => Load("llama2", edit: j => j[section] = JsonNode.Parse(json));
        act.Should().Throw<CMoEFormatException>().WithMessage($"*tokenizer.json*{expected}*tokenizer.model*");
    }
}
