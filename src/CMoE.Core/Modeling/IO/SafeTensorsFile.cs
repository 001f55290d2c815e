using Microsoft.Win32.SafeHandles;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Modeling.IO;

/// <summary>One tensor's entry in a safetensors header.</summary>
/// <param name="Name">The tensor's key.</param>
/// <param name="DType">The safetensors dtype name (F32, F16, BF16, I64, ...).</param>
/// <param name="Shape">The shape.</param>
/// <param name="Begin">Byte offset of the data, relative to the end of the header.</param>
/// <param name="End">Byte offset one past the data, relative to the end of the header.</param>
public sealed record SafeTensorInfo(string Name, string DType, long[] Shape, long Begin, long End)
{
    /// <summary>Number of elements.</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, b) => checked(a * b));
}

/// <summary>
/// A validated safetensors file, read tensor by tensor with positioned reads straight into each tensor's
/// memory (no memory map, so reading a model larger than RAM keeps only the tensors in use resident). Layout (see also <see cref="SafeTensorsWriter"/>):
/// <c>u64 little-endian N</c>, then N bytes of UTF-8 JSON
/// <c>{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}</c>,
/// then the raw little-endian tensor data; offsets are relative to the first byte after the header.
/// Every entry is checked against the file before any data is read: dtype known, shape non-negative
/// and without overflow, byte length = elements x dtype size, ranges inside the file and not overlapping.
/// </summary>
public sealed class SafeTensorsFile : IDisposable
{
    /// <summary>Largest header accepted (100 MB, as the reference implementation).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private readonly SafeFileHandle _file;
    private readonly long _dataStart;
    private bool _disposed;

    /// <summary>The file's path.</summary>
    public string Path { get; }

    /// <summary>The tensors, by name, in header order.</summary>
    public IReadOnlyDictionary<string, SafeTensorInfo> Tensors { get; }

    /// <summary>The optional <c>__metadata__</c> string map.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    private SafeTensorsFile(string path)
    {
        Path = path;
        var info = new FileInfo(path);
        if (!info.Exists)
            throw new FileNotFoundException($"Safetensors file '{path}' does not exist. Check the model folder path.", path);
        long length = info.Length;
        if (length < 8)
            throw Corrupt(path, $"it is {length} bytes long, shorter than the 8-byte header length; the file is truncated: download it again");
        _file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            var lengthField = new byte[8];
            ReadExactly(lengthField, 0);
            ulong headerLength = BitConverter.ToUInt64(lengthField);
            if (headerLength > MaxHeaderBytes || (long)headerLength > length - 8)
                throw Corrupt(path, $"its header claims {headerLength} bytes but the file has {length - 8} after the length field; the file is truncated or not safetensors");
            _dataStart = 8 + (long)headerLength;
            var headerBytes = new byte[headerLength];
            ReadExactly(headerBytes, 8);
            (Tensors, Metadata) = FormatGuard.Run(path, "The file is corrupt: download it again.", () => ParseHeader(path, headerBytes, length - _dataStart));
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Opens and validates a safetensors file.</summary>
    /// <exception cref="CMoEFormatException">The file is not a valid safetensors file.</exception>
    public static SafeTensorsFile Open(string path) => new(path);

    /// <summary>Whether the file holds a tensor of that name.</summary>
    public bool Contains(string name) => Tensors.ContainsKey(name);

    /// <summary>
    /// Reads a tensor into a new CPU tensor, converted to <paramref name="dtype"/> when given
    /// (float types convert among themselves; integer tensors keep their type when null).
    /// </summary>
    public Tensor Load(string name, ScalarType? dtype = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!Tensors.TryGetValue(name, out var info))
            throw new CMoEFormatException($"Tensor '{name}' is not in '{Path}'. The checkpoint does not match the architecture in config.json.");
        var stored = ToScalarType(info.DType);
        var tensor = empty(info.Shape, stored);
        try
        {
            ReadInto(tensor, _dataStart + info.Begin);
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
        if (dtype is { } target && target != stored)
        {
            var converted = tensor.to(target);
            tensor.Dispose();
            return converted;
        }
        return tensor;
    }

    /// <summary>Closes the file.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _file.Dispose();
    }

    /// <summary>
    /// Reads the tensor's bytes from <paramref name="offset"/> straight into its memory, in chunks of at most
    /// <see cref="SafeTensorsStreamWriter.ChunkBytes"/> (a span's length is an int: a tensor may exceed 2 GB).
    /// </summary>
    private void ReadInto(Tensor tensor, long offset)
    {
        using var flat = tensor.view(-1);                                        // [n], the tensor's memory
        long count = flat.shape[0], step = Math.Max(1, SafeTensorsStreamWriter.ChunkBytes / flat.ElementSize);
        for (long start = 0; start < count; start += step)
        {
            long n = Math.Min(step, count - start);
            using var part = flat.narrow(0, start, n);
            ReadExactly(part.bytes, offset + start * flat.ElementSize);
        }
    }

    private void ReadExactly(Span<byte> target, long offset)
    {
        while (target.Length > 0)
        {
            int read = RandomAccess.Read(_file, target, offset);
            if (read <= 0)
                throw Corrupt(Path, "it ended before the data its header describes; the file is truncated: download it again");
            target = target[read..];
            offset += read;
        }
    }

    /// <summary>Bytes per element of a safetensors dtype name, or 0 when unknown.</summary>
    internal static int DTypeSize(string dtype) => dtype switch
    {
        "F64" or "I64" or "U64" => 8,
        "F32" or "I32" or "U32" => 4,
        "F16" or "BF16" or "I16" or "U16" => 2,
        "I8" or "U8" or "BOOL" => 1,
        _ => 0,
    };

    /// <summary>The TorchSharp type of a safetensors dtype name.</summary>
    internal static ScalarType ToScalarType(string dtype) => dtype switch
    {
        "F64" => ScalarType.Float64,
        "F32" => ScalarType.Float32,
        "F16" => ScalarType.Float16,
        "BF16" => ScalarType.BFloat16,
        "I64" => ScalarType.Int64,
        "I32" => ScalarType.Int32,
        "I16" => ScalarType.Int16,
        "I8" => ScalarType.Int8,
        "U8" => ScalarType.Byte,
        "BOOL" => ScalarType.Bool,
        _ => throw new CMoEFormatException($"Unsupported safetensors dtype '{dtype}'. Supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL."),
    };

    /// <summary>The safetensors dtype name of a TorchSharp type.</summary>
    internal static string ToDTypeName(ScalarType type) => type switch
    {
        ScalarType.Float64 => "F64",
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Int16 => "I16",
        ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => throw new ArgumentException($"Tensor type {type} cannot be written to safetensors."),
    };

    private static (Dictionary<string, SafeTensorInfo>, Dictionary<string, string>) ParseHeader(
        string path, byte[] header, long dataLength)
    {
        var tensors = new Dictionary<string, SafeTensorInfo>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 8 });
        }
        catch (JsonException e)
        {
            throw Corrupt(path, $"its header is not valid JSON ({e.Message})", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw Corrupt(path, "its header is not a JSON object");
            foreach (var entry in doc.RootElement.EnumerateObject())
            {
                if (entry.Name == "__metadata__")
                {
                    if (entry.Value.ValueKind != JsonValueKind.Object)
                        throw Corrupt(path, "__metadata__ is not an object of strings");
                    foreach (var m in entry.Value.EnumerateObject())
                        metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                    continue;
                }
                tensors[entry.Name] = ParseEntry(path, entry, dataLength);
            }
        }
        CheckNoOverlap(path, tensors.Values);
        return (tensors, metadata);
    }

    private static SafeTensorInfo ParseEntry(string path, JsonProperty entry, long dataLength)
    {
        string name = entry.Name;
        var v = entry.Value;
        if (v.ValueKind != JsonValueKind.Object
            || !v.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String
            || !v.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array
            || !v.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw Corrupt(path, $"tensor '{name}' lacks dtype, shape or data_offsets");
        string dtype = dt.GetString()!;
        int size = DTypeSize(dtype);
        if (size == 0)
            throw new CMoEFormatException($"'{path}': tensor '{name}' has unsupported dtype '{dtype}'. Supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL; convert the checkpoint to one of them.");
        var shape = new long[sh.GetArrayLength()];
        long elements = 1;
        int i = 0;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
                throw Corrupt(path, $"tensor '{name}' has an invalid dimension in its shape");
            shape[i++] = dim;
            try { elements = checked(elements * dim); }
            catch (OverflowException) { throw Corrupt(path, $"tensor '{name}' has a shape whose size overflows"); }
        }
        long begin = ReadOffset(path, name, off[0]);
        long end = ReadOffset(path, name, off[1]);
        if (end < begin || end > dataLength)
            throw Corrupt(path, $"tensor '{name}' has data_offsets [{begin}, {end}] beyond the {dataLength} data bytes in the file; the file is truncated or corrupt: download it again");
        long expected;
        try { expected = checked(elements * size); }
        catch (OverflowException) { throw Corrupt(path, $"tensor '{name}' has a shape whose byte size overflows"); }
        if (end - begin != expected)
            throw Corrupt(path, $"tensor '{name}' has {end - begin} bytes but its shape [{string.Join(",", shape)}] of {dtype} needs {expected}");
        return new SafeTensorInfo(name, dtype, shape, begin, end);
    }

    private static long ReadOffset(string path, string name, JsonElement e)
    {
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt64(out long v) || v < 0)
            throw Corrupt(path, $"tensor '{name}' has an invalid data offset");
        return v;
    }

    private static void CheckNoOverlap(string path, IEnumerable<SafeTensorInfo> infos)
    {
        SafeTensorInfo? previous = null;
        foreach (var info in infos.Where(t => t.End > t.Begin).OrderBy(t => t.Begin))
        {
            if (previous is not null && info.Begin < previous.End)
                throw Corrupt(path, $"tensors '{previous.Name}' and '{info.Name}' overlap in the data section");
            previous = info;
        }
    }

    private static CMoEFormatException Corrupt(string path, string problem, Exception? inner = null)
    {
        string message = $"'{path}' is not a valid safetensors file: {problem}.";
        return inner is null ? new CMoEFormatException(message) : new CMoEFormatException(message, inner);
    }
}
