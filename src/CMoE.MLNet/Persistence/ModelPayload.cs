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
/// shards, tokenizer files), each stored as its own zip entry (or, above <see cref="ChunkBytes"/>, as several) so large
/// payloads are streamed, never held twice. Built in the transformer's <c>Save</c> and handed to <see cref="MlNetBridge.Save"/>.
/// </summary>
/// <remarks>
/// Layout inside the model zip, for a transformer saved in zip directory <c>D</c> (for example <c>TransformerChain</c>
/// or <c>TransformerChain/Transform_001</c>); the reader is <see cref="ModelPayloadReader"/>:
/// <code>
/// D/Model.key   ML.NET's 256-byte model header (model signature, versions, loader signature = format name,
///               loader assembly "CMoE.MLNet"), then our body, little-endian, strings as BinaryWriter writes them
///               (7-bit-encoded byte length + UTF-8):
///                 u32    magic 0x504F4D43 ("CMOP")
///                 u16    container layout version L (1 or 2)
///                 string format name
///                 u32    format version
///                 i32    header length H, then H bytes: the transformer's own header (opaque here)
///                 i32    entry count N, then N x
///                          L = 1: { string entry name, i64 entry length in bytes }
///                          L = 2: { string entry name, i64 entry length in bytes, i32 part count P,
///                                   P x i64 part length in bytes }
///               then ML.NET's string table and tail.
/// D/&lt;name&gt;          P = 0 (and every entry of layout 1): one zip entry holding the entry's raw bytes (no prefix).
/// D/&lt;name&gt;.partKKKK  P >= 1: the entry's bytes cut into P zip entries in order, KKKK = 0000, 0001, ... (at least four
///               digits); the part lengths sum to the entry length.
/// </code>
/// ML.NET buffers each zip entry whole (a MemoryStream or a temporary file) and fails on entries over 2 GB, so an entry
/// longer than <see cref="ChunkBytes"/> (1 GiB) is written in parts. A payload with no such entry is written as layout 1,
/// byte for byte what builds before layout 2 wrote (so they still read it); the reader reads both.
/// </remarks>
internal sealed class ModelPayload
{
    internal const uint Magic = 0x504F4D43; // "CMOP" little-endian

    /// <summary>The newest container layout: this build reads 1 and 2, and writes 2 only when an entry is cut into parts.</summary>
    internal const ushort LayoutVersion = 2;

    /// <summary>The largest entry stored as one zip entry; longer ones are cut into parts of this size.</summary>
    internal const long DefaultChunkBytes = 1L << 30;

    private static readonly AsyncLocal<long?> ChunkOverride = new();

    /// <summary>The part size in use: <see cref="DefaultChunkBytes"/>, or what <see cref="UseChunkBytes"/> set for this async flow.</summary>
    internal static long ChunkBytes => ChunkOverride.Value ?? DefaultChunkBytes;

    /// <summary>Sets the part size for saves in the current async flow (tests use a tiny one) until the result is disposed.</summary>
    internal static IDisposable UseChunkBytes(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bytes, 1);
        long? previous = ChunkOverride.Value;
        ChunkOverride.Value = bytes;
        return new Restore(() => ChunkOverride.Value = previous);
    }

    /// <summary>The zip entry name of part <paramref name="index"/> of entry <paramref name="name"/>.</summary>
    internal static string PartName(string name, int index) => $"{name}.part{index:D4}";

    private static readonly Regex EntryName = new("^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", RegexOptions.CultureInvariant);

    private readonly MemoryStream _header = new();
    private readonly List<(string Name, Func<EntrySource> Open)> _entries = [];

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

    /// <summary>
    /// Adds an entry whose bytes <paramref name="write"/> streams when the model is saved (into a temporary file first,
    /// so its length is known before it is stored and it can be cut into parts).
    /// </summary>
    public ModelPayload Add(string name, Action<Stream> write) => Add(name, () => EntrySource.Spill(write));

    /// <summary>Adds an entry holding <paramref name="bytes"/>.</summary>
    public ModelPayload Add(string name, ReadOnlyMemory<byte> bytes) => Add(name, () => new EntrySource(bytes.Length, (s, offset, count) =>
        s.Write(bytes.Span.Slice((int)offset, (int)count))));

    /// <summary>Adds an entry streamed from the file at <paramref name="path"/> when the model is saved.</summary>
    public ModelPayload AddFile(string name, string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"Payload entry '{name}': file not found.", path);
        return Add(name, () => EntrySource.FromFile(path, delete: false));
    }

    private ModelPayload Add(string name, Func<EntrySource> open)
    {
        CheckEntryName(name);
        if (_entries.Exists(e => string.Equals(e.Name, name, StringComparison.OrdinalIgnoreCase)))
            throw new ArgumentException($"Payload entry '{name}' was added twice (zip entry names are case-insensitive).", nameof(name));
        _entries.Add((name, open));
        return this;
    }

    /// <summary>The header bytes written so far.</summary>
    internal ReadOnlySpan<byte> HeaderBytes { get { Header.Flush(); return _header.GetBuffer().AsSpan(0, (int)_header.Length); } }

    /// <summary>The entries, in order: each opens its bytes (dispose what it returns once stored).</summary>
    internal IReadOnlyList<(string Name, Func<EntrySource> Open)> Entries => _entries;

    /// <summary>Throws unless <paramref name="name"/> is a safe zip entry name that cannot clash with ML.NET's own.</summary>
    internal static void CheckEntryName(string name)
    {
        if (!EntryName.IsMatch(name ?? ""))
            throw new ArgumentException($"Payload entry name '{name}' must match {EntryName} (no folders).", nameof(name));
        if (name!.StartsWith("Model.", StringComparison.OrdinalIgnoreCase) || name.Equals("Schema", StringComparison.OrdinalIgnoreCase))
            throw new ArgumentException($"Payload entry name '{name}' is reserved by ML.NET.", nameof(name));
    }

    /// <summary>
    /// The zip entries an entry of <paramref name="length"/> bytes is stored as: (zip entry name, offset, length), one
    /// under its own name when it fits in <paramref name="chunk"/> bytes, else parts of <paramref name="chunk"/> bytes.
    /// </summary>
    internal static IReadOnlyList<(string ZipName, long Offset, long Length)> Split(string name, long length, long chunk)
    {
        if (length <= chunk) return [(name, 0, length)];
        long parts = (length + chunk - 1) / chunk;
        if (parts > ModelPayloadReader.MaxParts)
            throw new InvalidOperationException($"Payload entry '{name}' of {length} bytes would need {parts} parts of {chunk} bytes (at most {ModelPayloadReader.MaxParts}).");
        return Enumerable.Range(0, (int)parts).Select(i => (PartName(name, i), i * chunk, Math.Min(chunk, length - i * chunk))).ToList();
    }

    /// <summary>
    /// Writes our body (see the layout above) after the entries were stored; <paramref name="stored"/> lists each entry's
    /// length and, for an entry cut into parts, the part lengths (empty when stored whole).
    /// </summary>
    internal void WriteBody(BinaryWriter w, IReadOnlyList<(string Name, long Length, long[] Parts)> stored)
    {
        bool chunked = stored.Any(e => e.Parts.Length > 0);
        w.Write(Magic);
        w.Write(chunked ? LayoutVersion : (ushort)1);
        w.Write(Format.Name);
        w.Write(Format.Version);
        var header = HeaderBytes;
        w.Write(header.Length);
        w.Write(header);
        w.Write(stored.Count);
        foreach (var (name, length, parts) in stored)
        {
            w.Write(name);
            w.Write(length);
            if (!chunked) continue;
            w.Write(parts.Length);
            foreach (long part in parts) w.Write(part);
        }
    }

    private sealed class Restore(Action restore) : IDisposable
    {
        public void Dispose() => restore();
    }
}

/// <summary>The bytes of one payload entry while it is saved: its length and a writer of any byte range of it.</summary>
internal sealed class EntrySource(long length, Action<Stream, long, long> writeRange, Action? cleanup = null) : IDisposable
{
    /// <summary>The entry's length in bytes.</summary>
    public long Length { get; } = length;

    /// <summary>Writes <paramref name="count"/> bytes from <paramref name="offset"/> of the entry to <paramref name="target"/>.</summary>
    public void Write(Stream target, long offset, long count) => writeRange(target, offset, count);

    /// <summary>A file's bytes, read with a bounded buffer; the file is deleted on dispose when <paramref name="delete"/>.</summary>
    public static EntrySource FromFile(string path, bool delete) => new(new FileInfo(path).Length, (target, offset, count) =>
    {
        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        file.Seek(offset, SeekOrigin.Begin);
        var buffer = new byte[(int)Math.Min(1 << 20, Math.Max(1, count))];
        while (count > 0)
        {
            int n = file.Read(buffer, 0, (int)Math.Min(buffer.Length, count));
            if (n <= 0) throw new IOException($"'{path}' became shorter while it was saved into the model zip.");
            target.Write(buffer, 0, n);
            count -= n;
        }
    }, delete ? () => File.Delete(path) : null);

    /// <summary>Runs <paramref name="write"/> into a temporary file and serves that file.</summary>
    public static EntrySource Spill(Action<Stream> write)
    {
        string tmp = Path.Combine(Path.GetTempPath(), $"cmoe-entry-{Guid.NewGuid():N}.tmp");
        try
        {
            using (var f = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20)) write(f);
            return FromFile(tmp, delete: true);
        }
        catch
        {
            File.Delete(tmp);
            throw;
        }
    }

    /// <summary>Deletes a temporary file behind the entry.</summary>
    public void Dispose() => cleanup?.Invoke();
}

/// <summary>
/// Reads back what <see cref="ModelPayload"/> wrote: format, version, the transformer's header and the named entries,
/// each opened only when asked for and streamed. Valid only while the loader runs (ML.NET closes the zip when
/// <c>Model.Load</c> returns): copy out what must outlive it (<see cref="ExtractTo"/>).
/// </summary>
/// <remarks>
/// Layout (see <see cref="ModelPayload"/> for the full description): after ML.NET's header, <c>Model.key</c> holds
/// u32 magic "CMOP", u16 layout version L (1 or 2), string format name, u32 format version, i32 H + H header bytes,
/// i32 N + N x { string name, i64 length } (L = 1) or N x { string name, i64 length, i32 P, P x i64 part length } (L = 2);
/// an entry is the zip entry <c>D/&lt;name&gt;</c> holding raw bytes when P = 0, else the P zip entries
/// <c>D/&lt;name&gt;.part0000</c>, ... holding its bytes in order. Every count and length is checked before anything is
/// allocated or read: P at most <see cref="MaxParts"/>, all parts of the table together at most <see cref="MaxTotalParts"/>,
/// part lengths positive and summing to the entry length, part names not clashing with another entry.
/// </remarks>
internal sealed class ModelPayloadReader
{
    /// <summary>The most parts one entry may have (65,536 parts of 1 GiB: 64 TiB).</summary>
    internal const int MaxParts = 1 << 16;

    /// <summary>The most parts a whole table may list.</summary>
    internal const int MaxTotalParts = 1 << 20;

    private readonly Func<string, Action<Stream>, bool> _tryOpen;
    private readonly Dictionary<string, (long Length, long[] Parts)> _entries;
    private readonly string _where;

    private ModelPayloadReader(ModelFormat format, uint version, ushort layout, byte[] header, Dictionary<string, (long, long[])> entries,
        IReadOnlyList<string> order, Func<string, Action<Stream>, bool> tryOpen, string where)
    {
        Format = format;
        Version = version;
        Layout = layout;
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

    /// <summary>The container layout the payload was written in (1, or 2 when an entry is cut into parts).</summary>
    public ushort Layout { get; }

    /// <summary>Reads the transformer's own header, positioned at its start.</summary>
    public BinaryReader Header { get; }

    /// <summary>The raw header bytes.</summary>
    public ReadOnlyMemory<byte> HeaderBytes { get; }

    /// <summary>The entry names in the order they were saved.</summary>
    public IReadOnlyList<string> EntryNames { get; }

    /// <summary>Whether an entry of that name was saved.</summary>
    public bool Contains(string name) => _entries.ContainsKey(name);

    /// <summary>The saved length of an entry in bytes.</summary>
    public long GetLength(string name) => _entries.TryGetValue(name, out var e) ? e.Length : throw Missing(name);

    /// <summary>The number of zip entries an entry was cut into (0: stored whole).</summary>
    public int GetPartCount(string name) => _entries.TryGetValue(name, out var e) ? e.Parts.Length : throw Missing(name);

    /// <summary>
    /// Streams entry <paramref name="name"/> to <paramref name="read"/>; the stream is valid only inside it. An entry in parts
    /// is one stream over all of them in order (ML.NET opens each part; they stay open until <paramref name="read"/> returns).
    /// </summary>
    public T Read<T>(string name, Func<Stream, T> read)
    {
        var (length, parts) = _entries.TryGetValue(name, out var e) ? e : throw Missing(name);
        if (parts.Length == 0) return ReadZipEntry(name, length, read);
        var streams = new List<Stream>(parts.Length);
        T Open(int part) => ReadZipEntry(ModelPayload.PartName(name, part), parts[part], s =>
        {
            streams.Add(s);
            if (part + 1 < parts.Length) return Open(part + 1);
            using var joined = new PartsStream(streams, parts, name, _where);
            return read(joined);
        });
        return Open(0);
    }

    /// <summary>Opens one zip entry of the payload, checking its length when the stream can tell.</summary>
    private T ReadZipEntry<T>(string zipName, long expected, Func<Stream, T> read)
    {
        T result = default!;
        bool found = _tryOpen(zipName, s =>
        {
            if (s.CanSeek && s.Length != expected)
                throw new CMoEFormatException($"{_where}: entry '{zipName}' holds {s.Length} bytes, the table says {expected}; the model zip is corrupt or truncated. Save it again.");
            result = read(s);
        });
        if (!found)
            throw new CMoEFormatException($"{_where}: entry '{zipName}' is listed but absent from the zip; the model zip is corrupt. Save it again.");
        return result;
    }

    /// <summary>Reads a whole entry into memory (for small entries such as config.json).</summary>
    public byte[] ReadAllBytes(string name)
    {
        long length = GetLength(name);
        if (length > Array.MaxLength)
            throw new CMoEFormatException($"{_where}: entry '{name}' holds {length} bytes, too many to read into memory; the model zip is corrupt, or the entry must be streamed.");
        return Read(name, s =>
        {
            var buffer = new byte[length];
            s.ReadExactly(buffer);
            return buffer;
        });
    }

    /// <summary>
    /// Copies entry <paramref name="name"/> to <paramref name="path"/> (written to a temp file, then moved); an entry in parts
    /// is copied one part at a time.
    /// </summary>
    public void ExtractTo(string name, string path)
    {
        var (length, parts) = _entries.TryGetValue(name, out var e) ? e : throw Missing(name);
        string tmp = path + ".partial";
        try
        {
            using (var f = File.Create(tmp))
            {
                if (parts.Length == 0) ReadZipEntry(name, length, s => CopyExactly(s, f, length, name));
                for (int i = 0; i < parts.Length; i++)
                {
                    string part = ModelPayload.PartName(name, i);
                    ReadZipEntry(part, parts[i], s => CopyExactly(s, f, parts[i], part));
                }
            }
            File.Move(tmp, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }

    /// <summary>Copies exactly <paramref name="count"/> bytes with a bounded buffer; a shorter or longer source is corrupt.</summary>
    private int CopyExactly(Stream source, Stream target, long count, string zipName)
    {
        var buffer = new byte[(int)Math.Min(1 << 20, Math.Max(1, count))];
        long left = count;
        while (left > 0)
        {
            int n = source.Read(buffer, 0, (int)Math.Min(buffer.Length, left));
            if (n <= 0) throw new CMoEFormatException($"{_where}: entry '{zipName}' ends {left} bytes before the {count} the table lists; the model zip is corrupt or truncated. Save it again.");
            target.Write(buffer, 0, n);
            left -= n;
        }
        if (source.Read(buffer, 0, 1) > 0)
            throw new CMoEFormatException($"{_where}: entry '{zipName}' holds more than the {count} bytes the table lists; the model zip is corrupt. Save it again.");
        return 0;
    }

    private CMoEFormatException Missing(string name) =>
        new($"{_where}: no entry '{name}' (it has: {string.Join(", ", EntryNames)}). The model was saved by a different transformer version; save it again with this one.");

    /// <summary>
    /// Reads our body from the model stream (layout above) and checks magic, layout version, format name and version,
    /// and the entry table.
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
            if (layout is < 1 or > ModelPayload.LayoutVersion)
                throw new CMoEFormatException($"{where}: CMoE payload layout {layout}, this CMoE.MLNet reads layouts 1-{ModelPayload.LayoutVersion}. Use the CMoE.MLNet version that saved the model (or a newer one).");
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
            var entries = new Dictionary<string, (long, long[])>(StringComparer.Ordinal);
            var order = new List<string>(count);
            int totalParts = 0;
            for (int i = 0; i < count; i++)
            {
                string entry = body.ReadString();
                long length = body.ReadInt64();
                ModelPayload.CheckEntryName(entry);
                long[] parts = layout >= 2 ? ReadParts(body, entry, length, ref totalParts, where) : [];
                if (length < 0 || !entries.TryAdd(entry, (length, parts)))
                    throw new CMoEFormatException($"{where}: invalid table entry '{entry}'; the zip is corrupt.");
                order.Add(entry);
            }
            CheckPartNames(entries, where);
            return new ModelPayloadReader(expected, version, layout, header, entries, order, tryOpen, where);
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            throw new CMoEFormatException($"{where}: the CMoE payload of format '{expected.Name}' is truncated or corrupt ({e.Message}). Save the model again.", e);
        }
    }

    /// <summary>Reads and checks one entry's part table (layout 2): count within bounds, each part positive, sum = length.</summary>
    private static long[] ReadParts(BinaryReader body, string entry, long length, ref int totalParts, string where)
    {
        int count = body.ReadInt32();
        if (count < 0 || count > MaxParts || count > MaxTotalParts - totalParts)
            throw new CMoEFormatException($"{where}: entry '{entry}' lists {count} parts (at most {MaxParts} per entry and {MaxTotalParts} in all); the model zip is corrupt. Save it again.");
        totalParts += count;
        var parts = new long[count];
        long sum = 0;
        for (int p = 0; p < count; p++)
        {
            parts[p] = body.ReadInt64();
            if (parts[p] <= 0)
                throw new CMoEFormatException($"{where}: entry '{entry}' part {p} has length {parts[p]}; part lengths are positive. The model zip is corrupt. Save it again.");
            if (parts[p] > length - sum)
                throw new CMoEFormatException($"{where}: entry '{entry}' parts 0-{p} hold more than the entry's {length} bytes; the model zip is corrupt. Save it again.");
            sum += parts[p];
        }
        if (count > 0 && sum != length)
            throw new CMoEFormatException($"{where}: the {count} parts of entry '{entry}' hold {sum} bytes, the entry {length}; the model zip is corrupt. Save it again.");
        return parts;
    }

    /// <summary>A part's zip entry name must not be another entry's (zip names are case-insensitive).</summary>
    private static void CheckPartNames(Dictionary<string, (long Length, long[] Parts)> entries, string where)
    {
        if (entries.Values.All(e => e.Parts.Length == 0)) return;
        var names = new HashSet<string>(entries.Keys, StringComparer.OrdinalIgnoreCase);
        foreach (var (entry, (_, parts)) in entries)
            for (int p = 0; p < parts.Length; p++)
                if (!names.Add(ModelPayload.PartName(entry, p)))
                    throw new CMoEFormatException($"{where}: part {p} of entry '{entry}' has the zip name of another entry; the model zip is corrupt. Save it again.");
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

/// <summary>
/// One read-only stream over an entry's parts in order, each read for exactly the length the table lists (a part that
/// ends early is corrupt, whether or not its stream can tell its length).
/// </summary>
internal sealed class PartsStream(IReadOnlyList<Stream> parts, IReadOnlyList<long> lengths, string entry, string where) : Stream
{
    private int _part;
    private long _leftInPart = lengths.Count > 0 ? lengths[0] : 0;
    private long _position;

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => lengths.Sum();
    public override long Position { get => _position; set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        while (_part < parts.Count && _leftInPart == 0)
        {
            _part++;
            _leftInPart = _part < parts.Count ? lengths[_part] : 0;
        }
        if (_part >= parts.Count || buffer.Length == 0) return 0;
        int n = parts[_part].Read(buffer[..(int)Math.Min(buffer.Length, _leftInPart)]);
        if (n <= 0)
            throw new CMoEFormatException($"{where}: part {_part} of entry '{entry}' ends {_leftInPart} bytes before the {lengths[_part]} the table lists; the model zip is corrupt or truncated. Save it again.");
        _leftInPart -= n;
        _position += n;
        return n;
    }

    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}
