using System.Text;
using System.Text.Json;

namespace CMoE;

/// <summary>
/// The boundary of every file parser: whatever a malformed file makes the JSON or text APIs throw
/// (bad syntax, invalid UTF-8, duplicate keys, a number where a string belongs, ...) surfaces as one
/// <see cref="CMoEFormatException"/> that names the file, the problem and the fix.
/// </summary>
internal static class FormatGuard
{
    /// <summary>UTF-8 that rejects invalid bytes instead of replacing them.</summary>
    public static readonly Encoding StrictUtf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Reads a whole text file as strict UTF-8.</summary>
    public static string ReadText(string path, string fix) =>
        Run(path, fix, () => File.ReadAllText(path, StrictUtf8));

    /// <summary>Runs <paramref name="parse"/>, turning parsing failures into <see cref="CMoEFormatException"/>.</summary>
    public static T Run<T>(string path, string fix, Func<T> parse)
    {
        try
        {
            return parse();
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or ArgumentException or FormatException
                                      or KeyNotFoundException or InvalidCastException or NullReferenceException
                                      or IndexOutOfRangeException or OverflowException or DecoderFallbackException)
        {
            if (e is CMoEFormatException) throw;
            throw new CMoEFormatException($"'{path}' is malformed ({e.Message.Split('\n')[0]}). {fix}", e);
        }
    }
}
