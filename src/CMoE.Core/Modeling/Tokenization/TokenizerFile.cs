namespace CMoE.Modeling.Tokenization;

/// <summary>Which tokenizer file of a Hugging Face model folder <see cref="TokenizerLoader.FromFolder"/> reads.</summary>
public enum TokenizerFile
{
    /// <summary><c>tokenizer.model</c> when the folder has one, else <c>tokenizer.json</c>.</summary>
    Auto,

    /// <summary>The SentencePiece model <c>tokenizer.model</c> (Llama-2, TinyLlama, Mistral).</summary>
    SentencePieceModel,

    /// <summary>The Hugging Face fast-tokenizer file <c>tokenizer.json</c> (BPE: SentencePiece-style or byte-level).</summary>
    TokenizerJson,
}
