using System.Text.Json;
using Microsoft.ML.Tokenizers;

namespace CMoE.Modeling.Tokenization;

/// <summary>Loads the tokenizer of a Hugging Face model folder (Llama-2, TinyLlama, Llama-3, Qwen2, tinyref-llama).</summary>
public static class TokenizerLoader
{
    internal const string SentencePieceFileName = "tokenizer.model";
    internal const string JsonFileName = "tokenizer.json";

    /// <summary>
    /// Loads the tokenizer of <paramref name="folder"/>. BOS/EOS come from <c>tokenizer_config.json</c>
    /// (<c>bos_token</c>, <c>eos_token</c>, <c>add_bos_token</c>, <c>add_eos_token</c>), else from <c>config.json</c> /
    /// <c>generation_config.json</c> (<c>bos_token_id</c>, <c>eos_token_id</c>), else from the tokenizer file.
    /// </summary>
    /// <param name="folder">The model folder.</param>
    /// <param name="prefer">Which file to read; <see cref="TokenizerFile.Auto"/> takes tokenizer.model when present.</param>
    /// <returns>The tokenizer.</returns>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    /// <exception cref="FileNotFoundException">The folder has no tokenizer file (of the kind asked for).</exception>
    /// <exception cref="CMoEFormatException">A tokenizer or config file is malformed or of an unsupported kind.</exception>
    public static TextTokenizer FromFolder(string folder, TokenizerFile prefer = TokenizerFile.Auto)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"Model folder '{folder}' does not exist. Pass the folder of a Hugging Face model (with tokenizer.model or tokenizer.json).");

        string spPath = Path.Combine(folder, SentencePieceFileName);
        string jsonPath = Path.Combine(folder, JsonFileName);
        bool useSentencePiece = prefer switch
        {
            TokenizerFile.SentencePieceModel => File.Exists(spPath) ? true : throw new FileNotFoundException(
                $"'{folder}' has no {SentencePieceFileName}. Copy it from the model's Hugging Face repository, or load " +
                $"{JsonFileName} instead (TokenizerFile.TokenizerJson or TokenizerFile.Auto).", spPath),
            TokenizerFile.TokenizerJson => File.Exists(jsonPath) ? false : throw new FileNotFoundException(
                $"'{folder}' has no {JsonFileName}. Copy it from the model's Hugging Face repository, or load " +
                $"{SentencePieceFileName} instead (TokenizerFile.SentencePieceModel or TokenizerFile.Auto).", jsonPath),
            _ => File.Exists(spPath) || (File.Exists(jsonPath) ? false : throw new FileNotFoundException(
                $"'{folder}' has neither {SentencePieceFileName} nor {JsonFileName}. Copy the tokenizer files of the Hugging Face " +
                $"model (tokenizer.model or tokenizer.json, with tokenizer_config.json) into the folder.", jsonPath)),
        };

        string chosen = useSentencePiece ? spPath : jsonPath;
        return FormatGuard.Run(chosen, "Re-download the tokenizer files (tokenizer.model / tokenizer.json, tokenizer_config.json).", () =>
        {
            var config = TokenizerConfig.Read(folder);
            return useSentencePiece ? LoadSentencePiece(spPath, config) : LoadJson(jsonPath, config);
        });
    }

    private static TextTokenizer LoadSentencePiece(string path, TokenizerConfig config)
    {
        LlamaTokenizer first = CreateLlama(path, null);
        // Special tokens are matched in the raw text (as Hugging Face does): create again naming them.
        var specials = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (string? token in new[] { first.BeginningOfSentenceToken, first.EndOfSentenceToken, first.UnknownToken, config.Bos.Token, config.Eos.Token })
        {
            if (token is not null && first.Vocabulary.TryGetValue(token, out int id)) specials[token] = id;
        }
        LlamaTokenizer tokenizer = specials.Count > 0 ? CreateLlama(path, specials) : first;
        var vocab = tokenizer.Vocabulary;

        int? bos = Resolve(config.Bos, config.BosIdFromModelConfig, vocab, path, "bos_token") ?? tokenizer.BeginningOfSentenceId;
        int? eos = Resolve(config.Eos, config.EosIdFromModelConfig, vocab, path, "eos_token") ?? tokenizer.EndOfSentenceId;
        bool addBos = config.AddBosToken ?? true;
        return new TextTokenizer(tokenizer, SentencePieceFileName, bos, eos, addBos, vocab.Count == 0 ? 0 : vocab.Values.Max() + 1, config.AddEosToken ?? false);
    }

    private static LlamaTokenizer CreateLlama(string path, IReadOnlyDictionary<string, int>? specials)
    {
        using var stream = File.OpenRead(path); // a missing or unreadable file fails here, as itself
        try
        {
            return LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false, specialTokens: specials);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException) // protobuf, argument and format errors of the content
        {
            throw new CMoEFormatException(
                $"{path} is not a SentencePiece BPE model that Microsoft.ML.Tokenizers can read ({ex.GetType().Name}: {ex.Message}). " +
                $"Re-download {SentencePieceFileName} from the model's Hugging Face repository, or load {JsonFileName} instead " +
                "(TokenizerFile.TokenizerJson).", ex);
        }
    }

    private static TextTokenizer LoadJson(string path, TokenizerConfig config)
    {
        var result = HfTokenizerJson.Load(path);
        int? templateBos = Single(result.Template.Prefix, path, "before");
        int? templateEos = Single(result.Template.Suffix, path, "after");
        int? bos = Resolve(config.Bos, config.BosIdFromModelConfig, result.Vocabulary, path, "bos_token") ?? templateBos;
        int? eos = Resolve(config.Eos, config.EosIdFromModelConfig, result.Vocabulary, path, "eos_token") ?? templateEos;
        // As transformers' LlamaTokenizerFast/GemmaTokenizerFast: add_bos_token/add_eos_token in tokenizer_config.json
        // rebuild the template; without them, the file's post-processor decides.
        bool addBos = config.AddBosToken ?? templateBos is not null;
        bool addEos = config.AddEosToken ?? templateEos is not null;
        return new TextTokenizer(result.Tokenizer, JsonFileName, bos, eos, addBos, result.VocabSize, addEos);
    }

    /// <summary>The one id a template puts before/after the text, or null; more than one is not supported.</summary>
    private static int? Single(IReadOnlyList<int> ids, string path, string where) => ids.Count switch
    {
        0 => null,
        1 => ids[0],
        _ => throw new CMoEFormatException(
            $"{path}: the post_processor template puts {ids.Count} special tokens {where} the text ([{string.Join(", ", ids)}]); " +
            "only one BOS before and one EOS after are supported. Edit the \"single\" template of tokenizer.json, or open an issue naming the model."),
    };

    /// <summary>tokenizer_config.json's token, else the model config's id; explicit null in tokenizer_config means none.</summary>
    private static int? Resolve(ConfigToken token, int? fromModelConfig, IReadOnlyDictionary<string, int> vocab, string tokenizerPath, string key)
    {
        if (token.Token is { } content)
        {
            return vocab.TryGetValue(content, out int id) ? id : throw new CMoEFormatException(
                $"tokenizer_config.json names {key} '{content}', which is not in the vocabulary of {tokenizerPath}. " +
                "The files come from different models; copy the tokenizer files of one model together.");
        }
        return token.ExplicitNull ? null : fromModelConfig;
    }

    /// <summary>A token named in tokenizer_config.json: its content, or an explicit null, or absent.</summary>
    private readonly record struct ConfigToken(string? Token, bool ExplicitNull);

    /// <summary>The BOS/EOS facts of tokenizer_config.json, config.json and generation_config.json.</summary>
    private sealed record TokenizerConfig(ConfigToken Bos, ConfigToken Eos, bool? AddBosToken, bool? AddEosToken, int? BosIdFromModelConfig, int? EosIdFromModelConfig)
    {
        public static TokenizerConfig Read(string folder)
        {
            ConfigToken bos = default, eos = default;
            bool? addBos = null, addEos = null;
            using (var tc = ReadJson(Path.Combine(folder, "tokenizer_config.json")))
            {
                if (tc is not null)
                {
                    var root = tc.RootElement;
                    bos = ReadToken(root, "bos_token");
                    eos = ReadToken(root, "eos_token");
                    if (root.TryGetProperty("add_bos_token", out var ab) && ab.ValueKind is JsonValueKind.True or JsonValueKind.False)
                        addBos = ab.GetBoolean();
                    if (root.TryGetProperty("add_eos_token", out var ae) && ae.ValueKind is JsonValueKind.True or JsonValueKind.False)
                        addEos = ae.GetBoolean();
                }
            }

            int? bosId = null, eosId = null;
            foreach (string name in new[] { "config.json", "generation_config.json" })
            {
                using var doc = ReadJson(Path.Combine(folder, name));
                if (doc is null) continue;
                bosId ??= ReadId(doc.RootElement, "bos_token_id");
                eosId ??= ReadId(doc.RootElement, "eos_token_id");
            }
            return new TokenizerConfig(bos, eos, addBos, addEos, bosId, eosId);
        }

        private static JsonDocument? ReadJson(string path)
        {
            if (!File.Exists(path)) return null;
            try
            {
                var doc = JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { AllowTrailingCommas = true });
                if (doc.RootElement.ValueKind == JsonValueKind.Object) return doc;
                doc.Dispose();
                throw new CMoEFormatException($"{path} is not a JSON object. Re-download it from the model's Hugging Face repository, or delete it.");
            }
            catch (JsonException ex)
            {
                throw new CMoEFormatException(
                    $"{path} is not valid JSON ({ex.Message}). Re-download it from the model's Hugging Face repository, or delete it.", ex);
            }
        }

        /// <summary>A token written as "&lt;s&gt;" or as {"content": "&lt;s&gt;", ...}.</summary>
        private static ConfigToken ReadToken(JsonElement root, string key)
        {
            if (!root.TryGetProperty(key, out var v)) return default;
            return v.ValueKind switch
            {
                JsonValueKind.String => new ConfigToken(v.GetString(), false),
                JsonValueKind.Object when v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => new ConfigToken(c.GetString(), false),
                JsonValueKind.Null => new ConfigToken(null, true),
                _ => default,
            };
        }

        /// <summary>An id written as 2 or as [2, 32000] (the first is taken).</summary>
        private static int? ReadId(JsonElement root, string key)
        {
            if (!root.TryGetProperty(key, out var v)) return null;
            if (v.ValueKind == JsonValueKind.Array && v.GetArrayLength() > 0) v = v[0];
            return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int id) ? id : null;
        }
    }
}
