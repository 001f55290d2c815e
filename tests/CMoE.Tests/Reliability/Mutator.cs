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
