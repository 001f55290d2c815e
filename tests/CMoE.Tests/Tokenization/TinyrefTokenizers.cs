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

    private readonly Dictionary<TokenizerFile, Lazy<(int[] Ids, TimeSpan Elapsed)>> _sotu = new();

    /// <summary>sotu_val.txt (../shared) encoded as one document with BOS by the tokenizer from <paramref name="file"/>; computed once.</summary>
    public (int[] Ids, TimeSpan Elapsed) SotuVal(TokenizerFile file)
    {
        Lazy<(int[], TimeSpan)> lazy;
        lock (_sotu)
        {
            if (!_sotu.TryGetValue(file, out lazy!))
            {
                _sotu[file] = lazy = new Lazy<(int[], TimeSpan)>(() =>
                {
                    string text = File.ReadAllText(TestPaths.InShared("data", "eval", "sotu_val.txt"), System.Text.Encoding.UTF8);
                    var sw = System.Diagnostics.Stopwatch.StartNew();
                    int[] ids = Get(file).Encode(text);
                    return (ids, sw.Elapsed);
                });
            }
        }
        return lazy.Value;
    }

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
