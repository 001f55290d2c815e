namespace CMoE.Modeling.Tokenization;

/// <summary>
/// GPT-2's byte-to-character table (Hugging Face <c>ByteLevel</c>): printable Latin-1 bytes stand for themselves, the
/// other 68 bytes map to U+0100.. in byte order, so every byte sequence is a string of visible characters.
/// </summary>
internal static class ByteLevelAlphabet
{
    /// <summary>byte -> its character.</summary>
    public static readonly char[] ByteToChar = BuildByteToChar();

    /// <summary>character -> its byte, or -1 (indexed by char; the table's characters are all below U+0144).</summary>
    public static readonly int[] CharToByte = BuildCharToByte();

    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        int extra = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= 33 and <= 126 or >= 161 and <= 172 or >= 174 and <= 255;
            map[b] = printable ? (char)b : (char)(256 + extra++);
        }
        return map;
    }

    private static int[] BuildCharToByte()
    {
        var map = new int[0x200];
        Array.Fill(map, -1);
        for (int b = 0; b < 256; b++) map[ByteToChar[b]] = b;
        return map;
    }
}
