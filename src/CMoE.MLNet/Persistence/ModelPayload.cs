using System.Text;
using System.Text.RegularExpressions;

namespace CMoE.MLNet.Persistence;

/// <summary>
/// The identity and version of one of our saved transformer formats.
/// </summary>
/// <param name="Name">Format name, also ML.NET's loader signature: 1-24 ASCII characters, unique among CMoE
/// transformers (for example <c>CMoEScoring</c>). Never change it once models exist.</param>
/// <param name="ModelSignature">ML.NET's 8-character model signature written in the entry header (for example
/// <c>CMOESCOR</c>).</param>
/// <param name="Version">The version this build writes (and the newest it reads). Bump it when the layout changes.</param>
/// <param name="MinReadableVersion">The oldest version this build still reads.</param>
internal sealed record ModelFormat(string Name, string ModelSignature, uint Version, uint MinReadableVersion = 1)
{
    /// <summary>Throws if the names do not fit ML.NET's fixed-size header fields.</summary>
    public void Validate()
    {
        if (Name.Length is < 1 or > 24 || !Name.All(char.IsAsciiLetterOrDigit))
            throw new ArgumentException($"Format name '{Name}' must be 1-24 ASCII letters or digits (it is ML.NET's loader signature).");
        if (ModelSignature.Length != 8 || !ModelSignature.All(c => c is > ' ' and < (char)0x7F))
            throw new ArgumentException($"Model signature '{ModelSignature}' of format '{Name}' must be exactly 8 printable ASCII characters.");
        if (MinReadableVersion < 1 || MinReadableVersion > Version)
            throw new ArgumentException($"Format '{Name}': need 1 <= MinReadableVersion ({MinReadableVersion}) <= Version ({Version}).");
    }
}

/// <summary>
/// What a transformer saves: a small header it writes itself plus named binary entries (config.json, safetensors
/// shards, tokenizer files), each stored as its own zip entry so large payloads are streamed, never held twice.
/// Built in the transformer's <c>Save</c> and handed to <see cref="MlNetBridge.Save"/>.
/// </summary>
/// <remarks>
/// Layout inside the model zip, for a transformer saved in zip directory <c>D</c> (for example <c>TransformerChain</c>
/// or <c>TransformerChain/Transform_001</c>); the reader is <see cref="ModelPayloadReader"/>:
/// <code>
/// D/Model.key   ML.NET's 256-byte model header (model signature, versions, loader signature = format name,
///               loader assembly "CMoE.MLNet"), then our body, little-endian, strings as BinaryWriter writes them
///               (7-bit-encoded byte length + UTF-8):
///                 u32    magic 0x504F4D43 ("CMOP")
///                 u16    container layout version (1)
///                 string format name
///                 u32    format version
///                 i32    header length H, then H bytes: the transformer's own header (opaque here)
///                 i32    entry count N, then N x { string entry name, i64 entry length in bytes }
///               then ML.NET's string table and tail.
/// D/&lt;name&gt;     one zip entry per payload entry, its raw bytes (no prefix), length as listed above.
/// </code>
/// </remarks>
internal sealed class ModelPayload
{
    internal const uint Magic = 0x504F4D43; // "CMOP" little-endian
    internal const ushort LayoutVersion = 1;

    private static readonly Regex EntryName = new("^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", RegexOptions.CultureInvariant);

    private readonly MemoryStream _header = new();
    private readonly List<(string Name, Action<Stream> Write)> _entries = [];

    /// <summary>Starts a payload of the given format.</summary>
    public ModelPayload(ModelFormat format)
    {
        format.Validate();
        Format = format;
        Header = new BinaryWriter(_header, Encoding.UTF8, leaveOpen: true);
    }

    /// <summary>The format written; its version goes into both ML.NET's header and our body.</summary>
    public ModelFormat Format { get; }

    /// <summary>Writes the transformer's small header (column names, options, shapes); keep it under a few KB.</summary>
    public BinaryWriter Header { get; }

    /// <summary>The entry names added so far, in order.</summary>
    public IReadOnlyList<string> EntryNames => _entries.ConvertAll(e => e.Name);

    /// <summary>Adds an entry whose bytes <paramref name="write"/> streams when the model is saved.</summary>
    public ModelPayload Add(string name, Action<Stream> write)
    {
        CheckEntryName(name);
        if (_entries.Exists(e => string.Equals(e.Name, name, StringComparison.OrdinalIgnoreCase)))
            throw new ArgumentException($"Payload entry '{name}' was added twice (zip entry names are case-insensitive).", nameof(name));
        _entries.Add((name, write));
        return this;
    }

    /// <summary>Adds an entry holding <paramref name="bytes"/>.</summary>
    public ModelPayload Add(string name, ReadOnlyMemory<byte> bytes) => Add(name, s => s.Write(bytes.Span));

    /// <summary>Adds an entry streamed from the file at <paramref name="path"/> when the model is saved.</summary>
    public ModelPayload AddFile(string name, string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"Payload entry '{name}': file not found.", path);
        return Add(name, s => { using var f = File.OpenRead(path); f.CopyTo(s, 1 << 20); });
    }

    /// <summary>The header bytes written so far.</summary>
    internal ReadOnlySpan<byte> HeaderBytes { get { Header.Flush(); return _header.GetBuffer().AsSpan(0, (int)_header.Length); } }

    /// <summary>The entries, in order.</summary>
    internal IReadOnlyList<(string Name, Action<Stream> Write)> Entries => _entries;

    /// <summary>Throws unless <paramref name="name"/> is a safe zip entry name that cannot clash with ML.NET's own.</summary>
    internal static void CheckEntryName(string name)
    {
        if (!EntryName.IsMatch(name ?? ""))
            throw new ArgumentException($"Payload entry name '{name}' must match {EntryName} (no folders).", nameof(name));
        if (name!.StartsWith("Model.", StringComparison.OrdinalIgnoreCase) || name.Equals("Schema", StringComparison.OrdinalIgnoreCase))
            throw new ArgumentException($"Payload entry name '{name}' is reserved by ML.NET.", nameof(name));
    }

    /// <summary>Writes our body (see the layout above) after the entries were stored with their measured lengths.</summary>
    internal void WriteBody(BinaryWriter w, IReadOnlyList<(string Name, long Length)> stored)
    {
        w.Write(Magic);
        w.Write(LayoutVersion);
        w.Write(Format.Name);
        w.Write(Format.Version);
        var header = HeaderBytes;
        w.Write(header.Length);
        w.Write(header);
        w.Write(stored.Count);
        foreach (var (name, length) in stored)
        {
            w.Write(name);
            w.Write(length);
        }
    }
}

/// <summary>
/// Reads back what <see cref="ModelPayload"/> wrote: format, version, the transformer's header and the named entries,
/// each opened only when asked for and streamed. Valid only while the loader runs (ML.NET closes the zip when
/// <c>Model.Load</c> returns): copy out what must outlive it (<see cref="ExtractTo"/>).
/// </summary>
/// <remarks>
/// Layout (see <see cref="ModelPayload"/> for the full description): after ML.NET's header, <c>Model.key</c> holds
/// u32 magic "CMOP", u16 layout version, string format name, u32 format version, i32 H + H header bytes,
/// i32 N + N x { string name, i64 length }; each entry is the zip entry <c>D/&lt;name&gt;</c> holding raw bytes.
/// </remarks>
internal sealed class ModelPayloadReader
{
    private readonly Func<string, Action<Stream>, bool> _tryOpen;
    private readonly Dictionary<string, long> _entries;
    private readonly string _where;

    private ModelPayloadReader(ModelFormat format, uint version, byte[] header, Dictionary<string, long> entries,
        IReadOnlyList<string> order, Func<string, Action<Stream>, bool> tryOpen, string where)
    {
        Format = format;
        Version = version;
        Header = new BinaryReader(new MemoryStream(header, writable: false), Encoding.UTF8);
        HeaderBytes = header;
        _entries = entries;
        EntryNames = order;
        _tryOpen = tryOpen;
        _where = where;
    }

    /// <summary>The format this code expected (its name matched the saved one).</summary>
    public ModelFormat Format { get; }

    /// <summary>The format version the entry was written with (within the readable range of <see cref="Format"/>).</summary>
    public uint Version { get; }

    /// <summary>Reads the transformer's own header, positioned at its start.</summary>
    public BinaryReader Header { get; }

    /// <summary>The raw header bytes.</summary>
    public ReadOnlyMemory<byte> HeaderBytes { get; }

    /// <summary>The entry names in the order they were saved.</summary>
    public IReadOnlyList<string> EntryNames { get; }

    /// <summary>Whether an entry of that name was saved.</summary>
    public bool Contains(string name) => _entries.ContainsKey(name);

    /// <summary>The saved length of an entry in bytes.</summary>
    public long GetLength(string name) => _entries.TryGetValue(name, out long n) ? n : throw Missing(name);

    /// <summary>Streams entry <paramref name="name"/> to <paramref name="read"/>; the stream is valid only inside it.</summary>
    public T Read<T>(string name, Func<Stream, T> read)
    {
        long expected = GetLength(name);
        T result = default!;
        bool found = _tryOpen(name, s =>
        {
            if (s.CanSeek && s.Length != expected)
                throw new CMoEFormatException($"{_where}: entry '{name}' holds {s.Length} bytes, the table says {expected}; the model zip is corrupt or truncated. Save it again.");
            result = read(s);
        });
        if (!found)
            throw new CMoEFormatException($"{_where}: entry '{name}' is listed but absent from the zip; the model zip is corrupt. Save it again.");
        return result;
    }

    /// <summary>Reads a whole entry into memory (for small entries such as config.json).</summary>
    public byte[] ReadAllBytes(string name) => Read(name, s =>
    {
        var buffer = new byte[checked((int)GetLength(name))];
        s.ReadExactly(buffer);
        return buffer;
    });

    /// <summary>Copies entry <paramref name="name"/> to <paramref name="path"/> (written to a temp file, then moved).</summary>
    public void ExtractTo(string name, string path)
    {
        string tmp = path + ".partial";
        Read(name, s =>
        {
            using (var f = File.Create(tmp)) s.CopyTo(f, 1 << 20);
            return 0;
        });
        File.Move(tmp, path, overwrite: true);
    }

    private CMoEFormatException Missing(string name) =>
        new($"{_where}: no entry '{name}' (it has: {string.Join(", ", EntryNames)}). The model was saved by a different transformer version; save it again with this one.");

    /// <summary>
    /// Reads our body from the model stream (layout above) and checks magic, layout version, format name and version.
    /// </summary>
    /// <param name="body">Reader positioned just after ML.NET's model header.</param>
    /// <param name="expected">The format the registered loader reads.</param>
    /// <param name="tryOpen">Opens a zip entry of this transformer's directory; false when absent.</param>
    /// <param name="where">Names the zip directory in messages.</param>
    internal static ModelPayloadReader Read(BinaryReader body, ModelFormat expected, Func<string, Action<Stream>, bool> tryOpen, string where)
    {
        try
        {
            uint magic = body.ReadUInt32();
            if (magic != ModelPayload.Magic)
                throw new CMoEFormatException($"{where}: not a CMoE payload (magic 0x{magic:X8}). The zip entry claims loader '{expected.Name}' but was not written by CMoE.MLNet.");
            ushort layout = body.ReadUInt16();
            if (layout != ModelPayload.LayoutVersion)
                throw new CMoEFormatException($"{where}: CMoE payload layout {layout}, this CMoE.MLNet reads layout {ModelPayload.LayoutVersion}. Use the CMoE.MLNet version that saved the model.");
            string name = body.ReadString();
            if (name != expected.Name)
                throw new CMoEFormatException($"{where}: payload of format '{name}', expected '{expected.Name}'; the zip is corrupt.");
            uint version = body.ReadUInt32();
            CheckVersion(expected, version, where);
            int headerLength = body.ReadInt32();
            if (headerLength < 0 || headerLength > 64 << 20)
                throw new CMoEFormatException($"{where}: invalid header length {headerLength}; the zip is corrupt.");
            byte[] header = body.ReadBytes(headerLength);
            if (header.Length != headerLength)
                throw new CMoEFormatException($"{where}: header truncated; the zip is corrupt.");
            int count = body.ReadInt32();
            if (count < 0 || count > 100_000)
                throw new CMoEFormatException($"{where}: invalid entry count {count}; the zip is corrupt.");
            var entries = new Dictionary<string, long>(StringComparer.Ordinal);
            var order = new List<string>(count);
            for (int i = 0; i < count; i++)
            {
                string entry = body.ReadString();
                long length = body.ReadInt64();
                ModelPayload.CheckEntryName(entry);
                if (length < 0 || !entries.TryAdd(entry, length))
                    throw new CMoEFormatException($"{where}: invalid table entry '{entry}'; the zip is corrupt.");
                order.Add(entry);
            }
            return new ModelPayloadReader(expected, version, header, entries, order, tryOpen, where);
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            throw new CMoEFormatException($"{where}: the CMoE payload of format '{expected.Name}' is truncated or corrupt ({e.Message}). Save the model again.", e);
        }
    }

    /// <summary>Throws <see cref="CMoEFormatException"/> when <paramref name="version"/> is outside what this build reads.</summary>
    internal static void CheckVersion(ModelFormat expected, uint version, string where)
    {
        if (version > expected.Version)
            throw new CMoEFormatException($"{where}: '{expected.Name}' format version {version} was written by a newer CMoE.MLNet; this build reads versions {expected.MinReadableVersion}-{expected.Version}. Upgrade CMoE.MLNet to load it.");
        if (version < expected.MinReadableVersion)
            throw new CMoEFormatException($"{where}: '{expected.Name}' format version {version} is too old; this build reads versions {expected.MinReadableVersion}-{expected.Version}. Re-save the model with an older CMoE.MLNet, or retrain.");
    }
}
