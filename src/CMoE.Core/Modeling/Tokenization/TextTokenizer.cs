using Microsoft.ML.Tokenizers;

namespace CMoE.Modeling.Tokenization;

/// <summary>
/// A model's tokenizer: a Microsoft.ML <see cref="Tokenizer"/> plus the BOS/EOS conventions of the model folder
/// it came from. Create one with <see cref="TokenizerLoader.FromFolder"/>.
/// </summary>
public sealed class TextTokenizer
{
    internal TextTokenizer(Tokenizer inner, string source, int? bosId, int? eosId, bool addBosToken, int vocabSize, bool addEosToken = false)
    {
        AddEosToken = addEosToken && eosId is not null;
        Inner = inner;
        Source = source;
        BosId = bosId;
        EosId = eosId;
        AddBosToken = addBosToken;
        VocabSize = vocabSize;
    }

    /// <summary>
    /// The Microsoft.ML tokenizer doing the work. It adds no BOS/EOS by itself; <see cref="Encode"/> does.
    /// </summary>
    public Tokenizer Inner { get; }

    /// <summary>The file the tokenizer was read from: <c>"tokenizer.model"</c> or <c>"tokenizer.json"</c>.</summary>
    public string Source { get; }

    /// <summary>The beginning-of-sequence token id, or null when the model has none.</summary>
    public int? BosId { get; }

    /// <summary>The end-of-sequence token id, or null when the model has none.</summary>
    public int? EosId { get; }

    /// <summary>
    /// Whether the model expects a BOS in front of a text (tokenizer_config.json <c>add_bos_token</c>; without it,
    /// true for <c>tokenizer.model</c> and, for <c>tokenizer.json</c>, whether its post-processor adds one).
    /// </summary>
    public bool AddBosToken { get; }

    /// <summary>
    /// Whether the model's own encoding puts an EOS after a text (tokenizer_config.json <c>add_eos_token</c>; without it,
    /// for <c>tokenizer.json</c>, whether its post-processor template ends with one). Hugging Face's
    /// <c>encode(text, add_special_tokens=True)</c> is <c>Encode(text, addBos: true, addEos: AddEosToken)</c>.
    /// </summary>
    public bool AddEosToken { get; }

    /// <summary>Number of token ids (one past the largest id); the size of the model's embedding rows it needs.</summary>
    public int VocabSize { get; }

    /// <summary>
    /// Encodes <paramref name="text"/> as one document, the whole text at once (no length limit), as the tokenizer file
    /// says: special and added tokens written in the text become their ids; SentencePiece's dummy-prefix "▁" goes where the
    /// file puts it (tokenizer.model and Metaspace "first": at the start; legacy Prepend normalizers: also after each added
    /// token). With <c>addEos: AddEosToken</c> the ids are Hugging Face's <c>encode(text, add_special_tokens=True)</c>.
    /// </summary>
    /// <param name="text">The text.</param>
    /// <param name="addBos">Put <see cref="BosId"/> first, when the model has a BOS and <see cref="AddBosToken"/> is true.</param>
    /// <param name="addEos">Put <see cref="EosId"/> last, when the model has an EOS.</param>
    /// <returns>The token ids.</returns>
    public int[] Encode(string text, bool addBos = true, bool addEos = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        IReadOnlyList<int> body = Inner.EncodeToIds(text, considerPreTokenization: true, considerNormalization: true);
        bool bos = addBos && AddBosToken && BosId is not null;
        bool eos = addEos && EosId is not null;
        var ids = new int[body.Count + (bos ? 1 : 0) + (eos ? 1 : 0)];
        int k = 0;
        if (bos) ids[k++] = BosId!.Value;
        for (int i = 0; i < body.Count; i++) ids[k++] = body[i];
        if (eos) ids[k] = EosId!.Value;
        return ids;
    }

    /// <summary>Decodes token ids to text; special tokens (BOS, EOS, ...) are left out.</summary>
    /// <param name="ids">The token ids.</param>
    /// <returns>The text.</returns>
    public string Decode(IEnumerable<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        return Inner switch
        {
            BpeTokenizer bpe => bpe.Decode(ids, considerSpecialTokens: false),
            HfTokenizer hf => hf.Decode(ids, considerSpecialTokens: false),
            _ => Inner.Decode(ids), // LlamaTokenizer leaves special tokens out by default
        } ?? string.Empty;
    }
}
