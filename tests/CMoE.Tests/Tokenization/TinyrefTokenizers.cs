using CMoE.Modeling.Tokenization;

namespace CMoE.Tests.Tokenization;

/// <summary>tinyref-llama's two tokenizer files, loaded once per test class (they are ~800 KB).</summary>
public sealed class TinyrefTokenizers
{
    /// <summary>The folder the tokenizers come from (the model vendored in the repository).</summary>
    public static string Folder => TestPaths.EmbeddedModel;

    /// <summary>From tokenizer.model.</summary>
    public TextTokenizer SentencePiece { get; } = TokenizerLoader.FromFolder(Folder, TokenizerFile.SentencePieceModel);

    /// <summary>From tokenizer.json.</summary>
    public TextTokenizer Json { get; } = TokenizerLoader.FromFolder(Folder, TokenizerFile.TokenizerJson);

    /// <summary>The tokenizer read from <paramref name="file"/>.</summary>
    public TextTokenizer Get(TokenizerFile file) => file == TokenizerFile.TokenizerJson ? Json : SentencePiece;
}

/// <summary>A temporary folder, deleted on dispose.</summary>
internal sealed class TempFolder : IDisposable
{
    public string Path { get; } = Directory.CreateDirectory(
        System.IO.Path.Combine(System.IO.Path.GetTempPath(), "cmoe-tok-" + Guid.NewGuid().ToString("N"))).FullName;

    public string Write(string name, string text)
    {
        string file = System.IO.Path.Combine(Path, name);
        File.WriteAllText(file, text);
        return file;
    }

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}
