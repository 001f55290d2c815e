using System.Diagnostics;
using CMoE.Modeling.IO;
using CMoE.Modeling.Tokenization;
using Xunit.Abstractions;

namespace CMoE.Tests.Tokenization;

/// <summary>Golden tests: tinyref-llama's tokenizer.model and tokenizer.json against each other and against HF's ids.</summary>
public sealed class TinyrefTokenizerTests(TinyrefTokenizers tokenizers, ITestOutputHelper output) : IClassFixture<TinyrefTokenizers>
{
    public static TheoryData<TokenizerFile> Files => new() { TokenizerFile.SentencePieceModel, TokenizerFile.TokenizerJson };

    public static TheoryData<string> Probes => new()
    {
        "Hello world",
        "The State of the Union is strong.",
        "naïve café, Zürich — 12% ½",
        "emoji 😀👍🏽 and 日本語 text",
        "tabs\tand\nnewlines\r\n and  double  spaces   here",
        "trailing space ",
        "ÿ\u0000\u007f\u00a0x",
        "Ω≈ç√∫ 🇺🇸 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    };

    [SharedTheory]
    [MemberData(nameof(Files))]
    public void SotuVal_MatchesHuggingFaceIds(TokenizerFile file)
    {
        long[] expected;
        using (var st = SafeTensorsFile.Open(TestPaths.InShared("models", "tinyref-llama", "eval_tokens.safetensors")))
        using (var t = st.Load("sotu_val_ids"))
            expected = t.data<long>().ToArray();
        string text = File.ReadAllText(TestPaths.InShared("data", "eval", "sotu_val.txt"), System.Text.Encoding.UTF8);

        var tok = tokenizers.Get(file);
        var sw = Stopwatch.StartNew();
        int[] ids = tok.Encode(text);
        sw.Stop();

        int match = 0;
        while (match < ids.Length && match < expected.Length && ids[match] == expected[match]) match++;
        double ratio = (double)ids.Length / expected.Length;
        output.WriteLine($"{tok.Source}: {ids.Length} tokens vs {expected.Length} reference, ratio {ratio:F6}, " +
                         $"first {match} equal, encoded {text.Length} chars in {sw.Elapsed.TotalSeconds:F2} s");

        ids[0].Should().Be(tok.BosId);
        match.Should().BeGreaterThanOrEqualTo(50_000);
        Math.Abs(ratio - 1).Should().BeLessThan(0.001);
        sw.Elapsed.Should().BeLessThan(TimeSpan.FromSeconds(30));
    }

    [Theory]
    [MemberData(nameof(Probes))]
    public void BothFiles_GiveTheSameIds_AndRoundTrip(string probe)
    {
        int[] sp = tokenizers.SentencePiece.Encode(probe);
        int[] json = tokenizers.Json.Encode(probe);
        json.Should().Equal(sp);
        tokenizers.SentencePiece.Decode(sp).Should().Be(probe);
        tokenizers.Json.Decode(json).Should().Be(probe);
    }

    [Fact]
    public void NonAscii_FallsBackToByteTokens()
    {
        // '😀' is not in the 8192-token vocabulary: its four UTF-8 bytes F0 9F 98 80 become <0xF0> <0x9F> <0x98> <0x80>.
        int[] ids = tokenizers.Json.Encode("😀", addBos: false);
        ids[^4..].Should().Equal(0xF0 + 3, 0x9F + 3, 0x98 + 3, 0x80 + 3);
        tokenizers.SentencePiece.Encode("😀", addBos: false).Should().Equal(ids);
    }

    [Theory]
    [MemberData(nameof(Files))]
    public void Metadata_ComesFromTheFolder(TokenizerFile file)
    {
        var tok = tokenizers.Get(file);
        tok.Source.Should().Be(file == TokenizerFile.TokenizerJson ? "tokenizer.json" : "tokenizer.model");
        tok.BosId.Should().Be(1);
        tok.EosId.Should().Be(2);
        tok.AddBosToken.Should().BeTrue();
        tok.VocabSize.Should().Be(8192);
        tok.Inner.Should().NotBeNull();
    }

    [Theory]
    [MemberData(nameof(Files))]
    public void BosAndEos_AreAddedOnRequest(TokenizerFile file)
    {
        var tok = tokenizers.Get(file);
        int[] body = tok.Encode("Hello world", addBos: false);
        tok.Encode("Hello world").Should().Equal([1, .. body]);
        tok.Encode("Hello world", addBos: true, addEos: true).Should().Equal([1, .. body, 2]);
        tok.Encode("", addBos: false).Should().BeEmpty();
        tok.Decode(tok.Encode("Hello world", addEos: true)).Should().Be("Hello world");
    }

    [Theory]
    [MemberData(nameof(Files))]
    public void SpecialTokensInText_AreMatched_AsHuggingFaceDoes(TokenizerFile file)
    {
        int[] ids = tokenizers.Get(file).Encode("<s>Hello</s>", addBos: false);
        ids[0].Should().Be(1);
        ids[^1].Should().Be(2);
    }

    [Fact]
    public void Auto_PrefersTokenizerModel()
    {
        TokenizerLoader.FromFolder(TinyrefTokenizers.Folder).Source.Should().Be("tokenizer.model");
    }
}
