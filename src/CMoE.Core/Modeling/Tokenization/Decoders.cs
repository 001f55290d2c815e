using System.Text;
using System.Text.Json;

namespace CMoE.Modeling.Tokenization;

/// <summary>
/// A tokenizer.json <c>decoder</c>: turns the token strings of the ids (added tokens as their content) into text,
/// as Hugging Face's <c>decode_chain</c> does, each decoder taking the previous one's list of strings: <c>Replace</c>
/// (per token; "▁" back to " "), <c>ByteFallback</c> (runs of <c>&lt;0xXX&gt;</c> tokens to their UTF-8 text, one U+FFFD per
/// byte when invalid), <c>Fuse</c> (one string), <c>Strip</c> (up to start/stop copies of a char off each token),
/// <c>Metaspace</c> (the replacement back to " ", and left out of the first token unless prepend_scheme is never),
/// <c>ByteLevel</c> (characters back to bytes, invalid UTF-8 to U+FFFD) and <c>Sequence</c>.
/// </summary>
internal abstract class TokenDecoder
{
    /// <summary>The next list of strings.</summary>
    public abstract List<string> DecodeChain(List<string> tokens);

    /// <summary>Reads the <c>decoder</c> element; null or absent gives null (tokens are joined with spaces, as HF does).</summary>
    /// <exception cref="CMoEFormatException">The type (or a setting of it) is not supported; the message names it.</exception>
    public static TokenDecoder? Read(JsonElement e, string path)
    {
        if (e.ValueKind != JsonValueKind.Object) return null;
        string type = HfJson.TypeOf(e);
        switch (type)
        {
            case "Sequence":
                return new SequenceDecoder(HfJson.Items(e, "decoders").Select(d => Read(d, path)).OfType<TokenDecoder>().ToArray());
            case "Replace":
                var (literal, _) = HfJson.Pattern(e, path, "decoder");
                if (literal is null) throw HfJson.Unsupported(path, "decoder", "Replace with a Regex pattern");
                return new ReplaceDecoder(literal, HfJson.String(e, "content") ?? "");
            case "ByteFallback": return new ByteFallbackDecoder();
            case "Fuse": return new FuseDecoder();
            case "Strip":
                string content = HfJson.String(e, "content") ?? " ";
                if (content.Length != 1) throw HfJson.Unsupported(path, "decoder", $"Strip(content \"{content}\")");
                return new StripDecoder(content[0], HfJson.Int(e, "start"), HfJson.Int(e, "stop"));
            case "Metaspace":
                string r = HfJson.String(e, "replacement") ?? "▁";
                string scheme = HfJson.String(e, "prepend_scheme") ?? (HfJson.Bool(e, "add_prefix_space", absent: true) ? "always" : "never");
                if (r.Length != 1) throw HfJson.Unsupported(path, "decoder", $"Metaspace(replacement \"{r}\")");
                return new MetaspaceDecoder(r[0], scheme != "never");
            case "ByteLevel": return new ByteLevelDecoder();
            default:
                throw HfJson.Unsupported(path, "decoder", type);
        }
    }
}

/// <summary>Each decoder in turn.</summary>
internal sealed class SequenceDecoder(IReadOnlyList<TokenDecoder> items) : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        foreach (var d in items) tokens = d.DecodeChain(tokens);
        return tokens;
    }
}

/// <summary>HF <c>Replace</c> decoder: a string replaced in every token.</summary>
internal sealed class ReplaceDecoder(string pattern, string content) : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens) => tokens.Select(t => t.Replace(pattern, content, StringComparison.Ordinal)).ToList();
}

/// <summary>HF <c>ByteFallback</c>: consecutive <c>&lt;0xXX&gt;</c> tokens become their UTF-8 text, or one U+FFFD per byte when invalid.</summary>
internal sealed class ByteFallbackDecoder : TokenDecoder
{
    private static readonly UTF8Encoding Strict = new(false, throwOnInvalidBytes: true);

    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        var bytes = new List<byte>();
        foreach (string t in tokens)
        {
            if (t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>'
                && byte.TryParse(t.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out byte b))
            {
                bytes.Add(b);
                continue;
            }
            Flush();
            result.Add(t);
        }
        Flush();
        return result;

        void Flush()
        {
            if (bytes.Count == 0) return;
            try
            {
                result.Add(Strict.GetString(bytes.ToArray()));
            }
            catch (DecoderFallbackException)
            {
                for (int i = 0; i < bytes.Count; i++) result.Add("\uFFFD");
            }
            bytes.Clear();
        }
    }
}

/// <summary>HF <c>Fuse</c>: all tokens as one string.</summary>
internal sealed class FuseDecoder : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens) => [string.Concat(tokens)];
}

/// <summary>HF <c>Strip</c>: up to <c>start</c> leading and <c>stop</c> trailing copies of a char off each token.</summary>
internal sealed class StripDecoder(char content, int start, int stop) : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens) => tokens.Select(t =>
    {
        int s = 0, e = t.Length;
        while (s < start && s < t.Length && t[s] == content) s++;
        for (int k = 0; k < stop && e > s && t[e - 1] == content; k++) e--;
        return t[s..e];
    }).ToList();
}

/// <summary>HF <c>Metaspace</c> decoder: the replacement becomes " ", except in the first token, where it is dropped (prepend scheme not never).</summary>
internal sealed class MetaspaceDecoder(char replacement, bool dropInFirst) : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens) => tokens.Select((t, i) =>
        i == 0 && dropInFirst ? t.Replace(replacement.ToString(), "", StringComparison.Ordinal) : t.Replace(replacement, ' ')).ToList();
}

/// <summary>
/// HF <c>ByteLevel</c> decoder: each token's characters back to bytes (a token with a character outside the table
/// gives its own UTF-8), all tokens' bytes as one text, invalid UTF-8 as U+FFFD.
/// </summary>
internal sealed class ByteLevelDecoder : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var bytes = new List<byte>();
        foreach (string t in tokens)
        {
            bool mapped = true;
            foreach (char c in t) mapped &= c < ByteLevelAlphabet.CharToByte.Length && ByteLevelAlphabet.CharToByte[c] >= 0;
            if (mapped) foreach (char c in t) bytes.Add((byte)ByteLevelAlphabet.CharToByte[c]);
            else bytes.AddRange(Encoding.UTF8.GetBytes(t));
        }
        return [Encoding.UTF8.GetString(bytes.ToArray())];
    }
}
