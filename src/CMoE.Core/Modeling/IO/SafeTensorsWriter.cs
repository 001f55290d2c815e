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
        var header = new Dictionary<string, object>(StringComparer.Ordinal);
        if (metadata is { Count: > 0 }) header["__metadata__"] = metadata;
        long offset = 0;
        foreach (var (name, t) in list)
        {
            long bytes = t.NumberOfElements * t.ElementSize;
            header[name] = new Dictionary<string, object>
            {
                ["dtype"] = SafeTensorsFile.ToDTypeName(t.dtype),
                ["shape"] = t.shape,
                ["data_offsets"] = new[] { offset, offset + bytes },
            };
            offset += bytes;
        }
        byte[] json = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(header));
        int padded = (json.Length + 7) / 8 * 8;
        string dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        string tmp = System.IO.Path.Combine(dir, $".{System.IO.Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                stream.Write(BitConverter.GetBytes((ulong)padded));
                stream.Write(json);
                for (int i = json.Length; i < padded; i++) stream.WriteByte((byte)' ');
                foreach (var (_, t) in list)
                {
                    using var cpu = t.device_type == TorchSharp.DeviceType.CPU ? t.alias() : t.cpu();
                    using var contiguous = cpu.contiguous();
                    stream.Write(contiguous.bytes);
                }
                stream.Flush(flushToDisk: true);
            }
            File.Move(tmp, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }
}
