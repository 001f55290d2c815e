using System.Text.Json;

namespace CMoE.Modeling.Tokenization;

/// <summary>What <see cref="HfTokenizerJson.Load"/> read from a <c>tokenizer.json</c>.</summary>
/// <param name="Tokenizer">The pipeline (adds no BOS/EOS itself).</param>
/// <param name="Vocabulary">Token string to id, model vocabulary and added tokens.</param>
/// <param name="VocabSize">One past the largest id.</param>
/// <param name="Template">What the post-processor puts around a single text.</param>
internal sealed record HfTokenizerJsonResult(HfTokenizer Tokenizer, IReadOnlyDictionary<string, int> Vocabulary, int VocabSize, PostTemplate Template);

/// <summary>
/// Reader of the Hugging Face <c>tokenizer.json</c> format (the file <c>tokenizers</c> saves). Each section is read by
/// the component that implements it, and unknown types fail naming the type: <c>added_tokens</c> (<see cref="AddedTokens"/>),
/// <c>normalizer</c> (<see cref="TextNormalizer"/>), <c>pre_tokenizer</c> (<see cref="PreTokenizer"/>), <c>model</c>
/// (<see cref="BpeModel"/>), <c>post_processor</c> (<see cref="PostTemplate"/>) and <c>decoder</c> (<see cref="TokenDecoder"/>).
/// The families differ only in which components their file names: SentencePiece-style BPE with byte fallback
/// (Llama-2, Mistral, Phi-3: Prepend+Replace or Metaspace; Gemma: Replace and a Split on " ") and byte-level BPE
/// (GPT-2, Llama-3, Qwen2: ByteLevel after an optional regex Split).
/// </summary>
internal static class HfTokenizerJson
{
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
            throw HfJson.Bad(path, $"is not valid JSON ({ex.Message})", ex);
        }
        using (doc)
        {
            return Build(path, doc.RootElement);
        }
    }

    private static HfTokenizerJsonResult Build(string path, JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("model", out var modelElement) || modelElement.ValueKind != JsonValueKind.Object)
            throw HfJson.Bad(path, "has no \"model\" object; it is not a Hugging Face tokenizers file");

        var model = BpeModel.Read(modelElement, path);
        var normalizer = TextNormalizer.Read(Get(root, "normalizer"), path);
        var preTokenizer = PreTokenizer.Read(Get(root, "pre_tokenizer"), path);
        var decoder = TokenDecoder.Read(Get(root, "decoder"), path);
        var added = new AddedTokens(AddedTokens.Read(root, path), normalizer);
        var tokenizer = new HfTokenizer(added, normalizer, preTokenizer, model, decoder);
        var template = PostTemplate.Read(Get(root, "post_processor"), path, tokenizer.Vocabulary);
        return new HfTokenizerJsonResult(tokenizer, tokenizer.Vocabulary, tokenizer.VocabSize, template);
    }

    private static JsonElement Get(JsonElement root, string name) => root.TryGetProperty(name, out var v) ? v : default;
}
