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
/// (it is written under a temporary name; disposing without completing deletes it).
/// </summary>
public sealed class SafeTensorsStreamWriter : IDisposable
{
    private readonly string _path, _tmp;
    private readonly IReadOnlyList<SafeTensorSpec> _specs;
    private readonly FileStream _stream;
    private int _next;
    private bool _completed;

    /// <summary>Creates the temporary file and writes the header.</summary>
    public SafeTensorsStreamWriter(string path, IReadOnlyList<SafeTensorSpec> specs, IReadOnlyDictionary<string, string>? metadata = null)
    {
        _path = path;
        _specs = specs;
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
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        _tmp = Path.Combine(dir, $".{Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");
        _stream = new FileStream(_tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
        _stream.Write(BitConverter.GetBytes((ulong)padded));
        _stream.Write(json);
        for (int i = json.Length; i < padded; i++) _stream.WriteByte((byte)' ');
    }

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
        _stream.Write(contiguous.bytes);
        _next++;
    }

    /// <summary>Flushes and moves the file into place; every tensor of the header must have been written.</summary>
    public void Complete()
    {
        if (_next != _specs.Count)
            throw new InvalidOperationException($"{_specs.Count - _next} tensor(s) of the header were not written (next: '{_specs[_next].Name}').");
        _stream.Flush(flushToDisk: true);
        _stream.Dispose();
        File.Move(_tmp, _path, overwrite: true);
        _completed = true;
    }

    /// <summary>Closes the file; an incomplete one is deleted.</summary>
    public void Dispose()
    {
        _stream.Dispose();
        if (!_completed && File.Exists(_tmp)) File.Delete(_tmp);
    }
}
