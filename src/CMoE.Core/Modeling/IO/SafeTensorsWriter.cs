using System.Text;
using System.Text.Json;
using static TorchSharp.torch;

namespace CMoE.Modeling.IO;

/// <summary>
/// Writes safetensors files. Layout (the reader is <see cref="SafeTensorsFile"/>): u64 little-endian
/// header length N, N bytes of UTF-8 JSON (entries in the given order, data_offsets relative to the
/// end of the header; padded with spaces to a multiple of 8), then the tensors' raw little-endian bytes
/// back to back. The file is written to a temporary name beside the target and moved into place, so a
/// failure never leaves a half-written file.
/// </summary>
public static class SafeTensorsWriter
{
    /// <summary>Writes the tensors (any device; copied to CPU) to <paramref name="path"/>.</summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        using var writer = new SafeTensorsStreamWriter(path, list.Select(kv => new SafeTensorSpec(kv.Key, kv.Value.dtype, kv.Value.shape)).ToList(), metadata);
        foreach (var (name, t) in list) writer.Write(name, t);
        writer.Complete();
    }
}

/// <summary>The name, type and shape of one tensor a <see cref="SafeTensorsStreamWriter"/> will write.</summary>
/// <param name="Name">The key.</param>
/// <param name="DType">The element type.</param>
/// <param name="Shape">The shape.</param>
public sealed record SafeTensorSpec(string Name, ScalarType DType, long[] Shape)
{
    /// <summary>Bytes of data.</summary>
    public long Bytes => Shape.Aggregate(1L, (a, b) => checked(a * b)) * SafeTensorsFile.DTypeSize(SafeTensorsFile.ToDTypeName(DType));
}

/// <summary>
/// Writes a safetensors file whose header (every name, type and shape) is known up front, one tensor at a
/// time in header order, so a model larger than memory can be written while it is produced. The layout is
/// <see cref="SafeTensorsWriter"/>'s; the file appears at its path only after <see cref="Complete"/>
/// (it is written under a temporary name; disposing without completing deletes it). Tensor data is copied
/// in chunks of at most <see cref="ChunkBytes"/>, so a single tensor may exceed 2 GB.
/// </summary>
public sealed class SafeTensorsStreamWriter : IDisposable
{
    /// <summary>The most bytes handed to one write or read call (a span's length is an int).</summary>
    internal const int ChunkBytes = 64 << 20;

    private readonly string? _path;
    private readonly string _file;
    private readonly IReadOnlyList<SafeTensorSpec> _specs;
    private readonly FileStream _stream;
    private int _next;
    private bool _completed;

    /// <summary>Creates the temporary file and writes the header.</summary>
    public SafeTensorsStreamWriter(string path, IReadOnlyList<SafeTensorSpec> specs, IReadOnlyDictionary<string, string>? metadata = null)
    {
        _path = path;
        _specs = specs;
        byte[] header = Header(specs, metadata);
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        _file = Path.Combine(dir, $".{Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");
        _stream = new FileStream(_file, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
        _stream.Write(header);
    }

    private SafeTensorsStreamWriter(string file, IReadOnlyList<SafeTensorSpec> specs, FileStream stream, int next)
    {
        _file = file;
        _specs = specs;
        _stream = stream;
        _next = next;
    }

    /// <summary>
    /// A writer of the file <paramref name="file"/> itself (no temporary name, nothing moved or deleted: the file is kept
    /// when the writer is disposed, to be continued later), positioned after the first <paramref name="written"/> tensors:
    /// 0 starts a new file; otherwise the file must begin with this header and hold at least those tensors, and anything
    /// after them (a write cut short) is cut off.
    /// </summary>
    /// <exception cref="CMoEFormatException">The file does not begin with this header or is shorter than the tensors it should hold.</exception>
    internal static SafeTensorsStreamWriter Continue(string file, IReadOnlyList<SafeTensorSpec> specs, IReadOnlyDictionary<string, string>? metadata,
        int written, string fix)
    {
        if (written < 0 || written > specs.Count) throw new ArgumentOutOfRangeException(nameof(written));
        byte[] header = Header(specs, metadata);
        if (written == 0)
        {
            var fresh = new FileStream(file, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
            fresh.Write(header);
            return new SafeTensorsStreamWriter(file, specs, fresh, 0);
        }
        long end = header.Length + specs.Take(written).Sum(s => s.Bytes);
        var stream = new FileStream(file, FileMode.Open, FileAccess.ReadWrite, FileShare.None, 1 << 20);
        try
        {
            var existing = new byte[header.Length];
            int read = stream.Length >= end ? stream.ReadAtLeast(existing, existing.Length, throwOnEndOfStream: false) : 0;
            if (read != header.Length || !existing.AsSpan().SequenceEqual(header))
                throw new CMoEFormatException($"'{file}' does not hold the {written} tensor(s) its checkpoint records (it is {stream.Length} bytes, or its header differs). {fix}");
            stream.SetLength(end);
            stream.Seek(end, SeekOrigin.Begin);
            return new SafeTensorsStreamWriter(file, specs, stream, written);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>The header bytes: u64 length N, then N bytes of JSON padded with spaces to a multiple of 8.</summary>
    private static byte[] Header(IReadOnlyList<SafeTensorSpec> specs, IReadOnlyDictionary<string, string>? metadata)
    {
        var header = new Dictionary<string, object>(StringComparer.Ordinal);
        if (metadata is { Count: > 0 }) header["__metadata__"] = metadata;
        long offset = 0;
        foreach (var spec in specs)
        {
            header[spec.Name] = new Dictionary<string, object>
            {
                ["dtype"] = SafeTensorsFile.ToDTypeName(spec.DType),
                ["shape"] = spec.Shape,
                ["data_offsets"] = new[] { offset, offset + spec.Bytes },
            };
            offset += spec.Bytes;
        }
        byte[] json = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(header));
        int padded = (json.Length + 7) / 8 * 8;
        var bytes = new byte[8 + padded];
        BitConverter.GetBytes((ulong)padded).CopyTo(bytes, 0);
        json.CopyTo(bytes, 8);
        bytes.AsSpan(8 + json.Length).Fill((byte)' ');
        return bytes;
    }

    /// <summary>How many tensors of the header were written.</summary>
    internal int Written => _next;

    /// <summary>Writes the next tensor; it must be the next one of the header, with its type and shape.</summary>
    public void Write(string name, Tensor tensor)
    {
        if (_next >= _specs.Count || _specs[_next].Name != name)
            throw new InvalidOperationException($"Tensor '{name}' written out of order; expected '{(_next < _specs.Count ? _specs[_next].Name : "(none left)")}'.");
        var spec = _specs[_next];
        if (tensor.dtype != spec.DType || !tensor.shape.SequenceEqual(spec.Shape))
            throw new InvalidOperationException($"Tensor '{name}' is {tensor.dtype} [{string.Join(",", tensor.shape)}]; the header says {spec.DType} [{string.Join(",", spec.Shape)}].");
        using var cpu = tensor.device_type == TorchSharp.DeviceType.CPU ? tensor.alias() : tensor.cpu();
        using var contiguous = cpu.contiguous();
        using var flat = contiguous.view(-1);                                    // [n]
        long count = flat.shape[0], step = Math.Max(1, ChunkBytes / flat.ElementSize);
        for (long start = 0; start < count; start += step)
        {
            using var part = flat.narrow(0, start, Math.Min(step, count - start));   // a span over the chunk only
            _stream.Write(part.bytes);
        }
        _next++;
    }

    /// <summary>Flushes what was written to the disk (the file stays open for the next tensors).</summary>
    internal void Flush() => _stream.Flush(flushToDisk: true);

    /// <summary>
    /// Flushes and moves the file into place (a writer from <see cref="Continue"/> only flushes and closes its file);
    /// every tensor of the header must have been written.
    /// </summary>
    public void Complete()
    {
        if (_next != _specs.Count)
            throw new InvalidOperationException($"{_specs.Count - _next} tensor(s) of the header were not written (next: '{_specs[_next].Name}').");
        _stream.Flush(flushToDisk: true);
        _stream.Dispose();
        if (_path is not null) File.Move(_file, _path, overwrite: true);
        _completed = true;
    }

    /// <summary>Closes the file; an incomplete temporary one is deleted (a continued file is kept).</summary>
    public void Dispose()
    {
        _stream.Dispose();
        if (!_completed && _path is not null && File.Exists(_file)) File.Delete(_file);
    }
}
