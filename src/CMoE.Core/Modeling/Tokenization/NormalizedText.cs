using System.Text;

namespace CMoE.Modeling.Tokenization;

/// <summary>
/// A piece of the input as the tokenizer pipeline transforms it (Hugging Face's <c>NormalizedString</c>, reduced to what
/// ids and offsets need): the current text and, for each UTF-16 char of it, the range of the original input it came from.
/// Normalizers and pre-tokenizers make new pieces; the original input is never changed.
/// </summary>
internal sealed class NormalizedText
{
    private readonly int[] _start;
    private readonly int[] _end;

    private NormalizedText(string text, int[] start, int[] end, int originalStart)
    {
        Text = text;
        _start = start;
        _end = end;
        OriginalStart = originalStart;
    }

    /// <summary>The current text.</summary>
    public string Text { get; }

    /// <summary>Where the piece begins in the original input (HF <c>offsets_original().0</c>; Metaspace "first" reads it).</summary>
    public int OriginalStart { get; }

    /// <summary>The original input, each char aligned to itself.</summary>
    public static NormalizedText FromInput(string input, int offset = 0)
    {
        var start = new int[input.Length];
        var end = new int[input.Length];
        for (int i = 0; i < input.Length; i++) { start[i] = offset + i; end[i] = offset + i + 1; }
        return new NormalizedText(input, start, end, offset);
    }

    /// <summary>The original range of chars [from, to) of the current text.</summary>
    public (int Start, int End) Original(int from, int to) =>
        Text.Length == 0 ? (OriginalStart, OriginalStart) : to <= from ? (_start[Math.Min(from, _start.Length - 1)], _start[Math.Min(from, _start.Length - 1)])
            : (_start[from], _end[to - 1]);

    /// <summary>The chars [from, to) as a piece of their own.</summary>
    public NormalizedText Slice(int from, int to)
    {
        if (from == 0 && to == Text.Length) return this;
        int origin = to > from ? _start[from] : Original(from, to).Start;
        return new NormalizedText(Text[from..to], _start[from..to], _end[from..to], origin);
    }

    /// <summary><paramref name="prefix"/> in front; its chars are aligned to the first char (HF <c>prepend</c>).</summary>
    public NormalizedText Prepend(string prefix)
    {
        if (Text.Length == 0) return this;
        var b = new Builder(Text.Length + prefix.Length);
        foreach (char c in prefix) b.Add(c, _start[0], _end[0]);
        for (int i = 0; i < Text.Length; i++) b.Add(Text[i], _start[i], _end[i]);
        return b.Build(OriginalStart);
    }

    /// <summary>Every non-overlapping occurrence of <paramref name="from"/> replaced; new chars span the replaced range.</summary>
    public NormalizedText Replace(string from, string to)
    {
        if (from.Length == 0 || !Text.Contains(from, StringComparison.Ordinal)) return this;
        var b = new Builder(Text.Length);
        for (int i = 0; i < Text.Length;)
        {
            if (string.CompareOrdinal(Text, i, from, 0, from.Length) == 0)
            {
                foreach (char c in to) b.Add(c, _start[i], _end[i + from.Length - 1]);
                i += from.Length;
            }
            else
            {
                b.Add(Text[i], _start[i], _end[i]);
                i++;
            }
        }
        return b.Build(OriginalStart);
    }

    /// <summary>The matches [start, end) replaced by <paramref name="to"/> (regex Replace).</summary>
    public NormalizedText Replace(IEnumerable<(int Start, int End)> matches, string to)
    {
        var b = new Builder(Text.Length);
        int pos = 0;
        foreach (var (s, e) in matches)
        {
            for (; pos < s; pos++) b.Add(Text[pos], _start[pos], _end[pos]);
            var (os, oe) = Original(s, e);
            foreach (char c in to) b.Add(c, os, oe);
            pos = e;
        }
        for (; pos < Text.Length; pos++) b.Add(Text[pos], _start[pos], _end[pos]);
        return b.Build(OriginalStart);
    }

    /// <summary>
    /// The text replaced as a whole (Unicode normalization, lowercasing): unchanged lengths keep the alignment char by char,
    /// otherwise every char spans the whole piece.
    /// </summary>
    public NormalizedText Transform(string text)
    {
        if (text == Text) return this;
        if (text.Length == Text.Length) return new NormalizedText(text, _start, _end, OriginalStart);
        var (s, e) = Original(0, Text.Length);
        var b = new Builder(text.Length);
        foreach (char c in text) b.Add(c, s, e);
        return b.Build(OriginalStart);
    }

    /// <summary>Each char mapped to a run of new chars aligned to it (ByteLevel's bytes-to-characters).</summary>
    public NormalizedText MapRunes(Func<Rune, string> map)
    {
        var b = new Builder(Text.Length * 2);
        for (int i = 0; i < Text.Length;)
        {
            Rune.DecodeFromUtf16(Text.AsSpan(i), out Rune r, out int n);
            string mapped = map(r);
            foreach (char c in mapped) b.Add(c, _start[i], _end[i + n - 1]);
            i += n;
        }
        return b.Build(OriginalStart);
    }

    /// <summary>Accumulates chars with their alignment.</summary>
    private sealed class Builder(int capacity)
    {
        private readonly StringBuilder _text = new(capacity);
        private readonly List<int> _start = new(capacity);
        private readonly List<int> _end = new(capacity);

        public void Add(char c, int start, int end)
        {
            _text.Append(c);
            _start.Add(start);
            _end.Add(end);
        }

        public NormalizedText Build(int originalStart) => new(_text.ToString(), _start.ToArray(), _end.ToArray(), originalStart);
    }
}
