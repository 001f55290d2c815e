using CMoE.Modeling.Tokenization;

namespace CMoE.Tests.Tokenization;

/// <summary>Missing and malformed tokenizer files fail with messages that name the file and the fix.</summary>
public sealed class TokenizerLoaderErrorTests
{
    private const string MinimalBpe = """
        {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
         "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": false}}
        """;

    [Fact]
    public void MissingFolder_SaysSo()
    {
        var act = () => TokenizerLoader.FromFolder("/nonexistent/cmoe-model");
        act.Should().Throw<DirectoryNotFoundException>().WithMessage("*/nonexistent/cmoe-model*does not exist*");
    }

    [Fact]
    public void FolderWithoutTokenizerFiles_NamesBothFiles()
    {
        using var dir = new TempFolder();
        var act = () => TokenizerLoader.FromFolder(dir.Path);
        act.Should().Throw<FileNotFoundException>()
            .WithMessage("*neither tokenizer.model nor tokenizer.json*Copy the tokenizer files*");
    }

    [Fact]
    public void PreferringAnAbsentFile_PointsToTheOther()
    {
        using var dir = new TempFolder();
        dir.Write("tokenizer.json", MinimalBpe);
        var act = () => TokenizerLoader.FromFolder(dir.Path, TokenizerFile.SentencePieceModel);
        act.Should().Throw<FileNotFoundException>().WithMessage("*has no tokenizer.model*TokenizerFile.TokenizerJson*");
        TokenizerLoader.FromFolder(dir.Path).Encode("ab", addBos: false).Should().Equal(2);
    }

    [Fact]
    public void InvalidJson_NamesTheFile()
    {
        using var dir = new TempFolder();
        string path = dir.Write("tokenizer.json", "{ \"model\": { \"type\": \"BPE\", ");
        var act = () => TokenizerLoader.FromFolder(dir.Path);
        act.Should().Throw<CMoEFormatException>()
            .WithMessage($"{path} is not valid JSON*Re-download tokenizer.json*tokenizer.model*");
    }

    [Fact]
    public void UnsupportedModelType_NamesTheTypeAndSuggestsTokenizerModel()
    {
        using var dir = new TempFolder();
        dir.Write("tokenizer.json", """{"model": {"type": "WordPiece", "vocab": {"a": 0}}}""");
        var act = () => TokenizerLoader.FromFolder(dir.Path);
        act.Should().Throw<CMoEFormatException>()
            .WithMessage("*tokenizer.json*model type 'WordPiece' is not supported*tokenizer.model*SentencePieceModel*");
    }

    [Fact]
    public void UnsupportedPreTokenizer_IsNamed()
    {
        using var dir = new TempFolder();
        dir.Write("tokenizer.json", MinimalBpe.Replace("\"Metaspace\"", "\"Whitespace\""));
        var act = () => TokenizerLoader.FromFolder(dir.Path);
        act.Should().Throw<CMoEFormatException>().WithMessage("*pre_tokenizer 'Whitespace' is not supported*tokenizer.model*");
    }

    [Fact]
    public void MergeOfUnknownTokens_IsReported()
    {
        using var dir = new TempFolder();
        dir.Write("tokenizer.json", MinimalBpe.Replace("\"a b\"", "\"a c\""));
        var act = () => TokenizerLoader.FromFolder(dir.Path);
        act.Should().Throw<CMoEFormatException>().WithMessage("*tokenizer.json: merge #0 ('a' 'c')*missing from model.vocab*");
    }

    [Fact]
    public void MissingVocab_IsReported()
    {
        using var dir = new TempFolder();
        dir.Write("tokenizer.json", """{"model": {"type": "BPE", "merges": []}}""");
        var act = () => TokenizerLoader.FromFolder(dir.Path);
        act.Should().Throw<CMoEFormatException>().WithMessage("*tokenizer.json has no \"model.vocab\" object*Re-download*");
    }

    [Fact]
    public void CorruptSentencePieceModel_NamesTheFileAndTheFix()
    {
        using var dir = new TempFolder();
        string path = Path.Combine(dir.Path, "tokenizer.model");
        File.WriteAllBytes(path, [0x0A, 0xFF, 0xFF, 0xFF, 0x0F, 0x01, 0x02]);
        var act = () => TokenizerLoader.FromFolder(dir.Path);
        act.Should().Throw<CMoEFormatException>()
            .WithMessage($"{path} is not a SentencePiece BPE model*Re-download tokenizer.model*TokenizerFile.TokenizerJson*");
    }

    [Fact]
    public void MalformedTokenizerConfig_NamesTheFile()
    {
        using var dir = new TempFolder();
        dir.Write("tokenizer.json", MinimalBpe);
        string path = dir.Write("tokenizer_config.json", "{\"bos_token\": ");
        var act = () => TokenizerLoader.FromFolder(dir.Path);
        act.Should().Throw<CMoEFormatException>().WithMessage($"{path} is not valid JSON*");
    }

    [Fact]
    public void BosTokenMissingFromVocabulary_IsReported()
    {
        using var dir = new TempFolder();
        dir.Write("tokenizer.json", MinimalBpe);
        dir.Write("tokenizer_config.json", """{"bos_token": {"content": "<s>"}}""");
        var act = () => TokenizerLoader.FromFolder(dir.Path);
        act.Should().Throw<CMoEFormatException>().WithMessage("*bos_token '<s>', which is not in the vocabulary*");
    }
}
