using System.IO.Compression;
using System.Text;

namespace CMoE.Tests.Reliability;

/// <summary>A seeded mutator for fuzzing parsers: byte flips, truncation, insertion, duplication and JSON-aware edits.</summary>
internal sealed class Mutator(int seed)
{
    private readonly Random _rng = new(seed);

    private static readonly string[] JsonTokens =
        ["null", "-1", "0", "1e308", "18446744073709551615", "\"\"", "[]", "{}", "true", "\"F32\"", "\"BF16\"", "[0,99999999999]", "\"..\\/..\\/etc\"", "[-5]", "\"\\u0000\""];

    public byte[] Mutate(byte[] input)
    {
        var data = input.ToList();
        int edits = 1 + _rng.Next(4);
        for (int e = 0; e < edits && data.Count > 0; e++)
        {
            switch (_rng.Next(7))
            {
                case 0: data[_rng.Next(data.Count)] ^= (byte)(1 << _rng.Next(8)); break;                    // bit flip
                case 1: data[_rng.Next(data.Count)] = (byte)_rng.Next(256); break;                           // random byte
                case 2:                                                                                       // delete a range
                    int from = _rng.Next(data.Count);
                    data.RemoveRange(from, 1 + _rng.Next(Math.Min(64, data.Count - from)));
                    break;
                case 3: data = data.Take(_rng.Next(data.Count)).ToList(); break;                             // truncate
                case 4: data.InsertRange(_rng.Next(data.Count + 1), Enumerable.Range(0, 1 + _rng.Next(16)).Select(_ => (byte)_rng.Next(256))); break;
                case 5:                                                                                       // swap a JSON value
                    data = ReplaceJsonValue(data);
                    break;
                default:                                                                                      // duplicate a chunk
                    int start = _rng.Next(data.Count), len = Math.Min(1 + _rng.Next(64), data.Count - start);
                    data.InsertRange(_rng.Next(data.Count + 1), data.GetRange(start, len));
                    break;
            }
        }
        return data.ToArray();
    }

    /// <summary>Replaces the text after a random ':' up to the next ',' or '}' with a hostile JSON token.</summary>
    private List<byte> ReplaceJsonValue(List<byte> data)
    {
        var colons = Enumerable.Range(0, data.Count).Where(i => data[i] == (byte)':').ToList();
        if (colons.Count == 0) return data;
        int at = colons[_rng.Next(colons.Count)] + 1;
        int end = at;
        while (end < data.Count && data[end] != (byte)',' && data[end] != (byte)'}') end++;
        data.RemoveRange(at, end - at);
        data.InsertRange(at, Encoding.UTF8.GetBytes(JsonTokens[_rng.Next(JsonTokens.Length)]));
        return data;
    }
}

/// <summary>
/// Edits a model zip the way a damaged or hostile one could differ: rewrites one entry's bytes (recompressed, so the zip
/// itself stays valid), deletes or renames entries, and locates the fields of a CMoE payload's entry table in
/// <c>Model.key</c> (container layout 2: per entry name, i64 length, i32 part count, part lengths).
/// </summary>
internal static class ZipEditor
{
    /// <summary>One entry of the payload table with the byte offsets of its fields inside Model.key.</summary>
    public sealed record TableEntry(string Name, long Length, int LengthAt, int PartCountAt, long[] Parts, int[] PartAt);

    /// <summary>The bytes of entry <paramref name="name"/> (full name, '/' separated).</summary>
    public static byte[] Read(string zip, string name)
    {
        using var archive = ZipFile.OpenRead(zip);
        using var s = archive.Entries.Single(e => e.FullName.Replace('\\', '/') == name).Open();
        using var m = new MemoryStream();
        s.CopyTo(m);
        return m.ToArray();
    }

    /// <summary>Copies <paramref name="source"/> to <paramref name="target"/> and replaces, deletes (null) or renames entries there.</summary>
    public static void Edit(string source, string target, string name, byte[]? bytes, string? renameTo = null)
    {
        if (Path.GetFullPath(source) != Path.GetFullPath(target)) File.Copy(source, target, overwrite: true);
        using var archive = ZipFile.Open(target, ZipArchiveMode.Update);
        var entry = archive.Entries.Single(e => e.FullName.Replace('\\', '/') == name);
        byte[] content = bytes ?? [];
        if (bytes is null || renameTo is not null)
        {
            using var s = entry.Open();
            using var m = new MemoryStream();
            s.CopyTo(m);
            content = bytes ?? m.ToArray();
        }
        string fullName = entry.FullName;
        entry.Delete();
        if (bytes is null && renameTo is null) return;
        using var w = archive.CreateEntry(renameTo ?? fullName).Open();
        w.Write(content);
    }

    /// <summary>
    /// The entry table of the payload body in <paramref name="key"/> (Model.key's bytes); in layout 1 every entry has no
    /// parts and <see cref="TableEntry.PartCountAt"/> is -1.
    /// </summary>
    public static List<TableEntry> Table(byte[] key)
    {
        using var r = new BinaryReader(new MemoryStream(key), Encoding.UTF8);
        r.BaseStream.Position = 256;                                  // ML.NET's model header
        r.ReadUInt32();
        ushort layout = r.ReadUInt16();
        r.ReadString();
        r.ReadUInt32();
        r.ReadBytes(r.ReadInt32());
        int count = r.ReadInt32();
        var table = new List<TableEntry>();
        for (int i = 0; i < count; i++)
        {
            string name = r.ReadString();
            int lengthAt = (int)r.BaseStream.Position;
            long length = r.ReadInt64();
            int countAt = layout >= 2 ? (int)r.BaseStream.Position : -1;
            int parts = layout >= 2 ? r.ReadInt32() : 0;
            var at = new int[parts];
            var lengths = new long[parts];
            for (int p = 0; p < parts; p++)
            {
                at[p] = (int)r.BaseStream.Position;
                lengths[p] = r.ReadInt64();
            }
            table.Add(new TableEntry(name, length, lengthAt, countAt, lengths, at));
        }
        return table;
    }

    /// <summary>Model.key's bytes with entry <paramref name="name"/>'s listed length set to <paramref name="length"/>.</summary>
    public static byte[] WithLength(byte[] key, string name, long length)
    {
        var copy = (byte[])key.Clone();
        BitConverter.GetBytes(length).CopyTo(copy, Table(key).Single(e => e.Name == name).LengthAt);
        return copy;
    }
}
