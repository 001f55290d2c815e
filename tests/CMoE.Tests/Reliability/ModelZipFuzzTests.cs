using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using CMoE.MLNet;
using CMoE.MLNet.Persistence;
using CMoE.Modeling.Weights;
using CMoE.Tests.MLNet;
using CMoE.Tests.Modeling;
using Microsoft.ML;

namespace CMoE.Tests.Reliability;

/// <summary>
/// Model zips from elsewhere: mutated bytes, hostile entry names, damaged part tables of chunked entries (container
/// layout 2) and mutated low-bit (carved int8) zips fail with our own exception, nothing escapes, hangs or allocates
/// without bound.
/// </summary>
public sealed class ModelZipFuzzTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly string _zip;

    private readonly Xunit.Abstractions.ITestOutputHelper _output;

    public ModelZipFuzzTests(Xunit.Abstractions.ITestOutputHelper output)
    {
        _output = output;
        TorchTestSetup.Pin();
        var config = TinyCheckpoint.Config();
        config["vocab_size"] = 8192;                                   // tinyref's tokenizer
        string model = TinyCheckpoint.Write(_dir["tiny"], config);
        foreach (var f in new[] { "tokenizer.model", "tokenizer_config.json" })
            File.Copy(Path.Combine(TestPaths.EmbeddedModel, f), Path.Combine(model, f));
        var ml = new MLContext(seed: 0);
        var rows = ml.Data.LoadFromEnumerable(new[] { new LanguageModelWorkoutTests.TextRow { Text = "hello" } });
        using var scorer = ml.Transforms.ScoreWithLanguageModel(model, maxTokens: 16).Fit(rows);
        _zip = _dir["model.zip"];
        ml.Model.Save(scorer, rows.Schema, _zip);
    }

    public void Dispose() => _dir.Dispose();

    /// <summary>Bytes one load of a mutated zip may allocate on its thread (the tiny model needs a few MB).</summary>
    private const long AllocationBound = 256L << 20;

    /// <summary>
    /// Loads <paramref name="path"/> on its own thread with a time limit: "loaded", "rejected: message" for our exception,
    /// or a description of what went wrong (another exception, a hang, an allocation over <see cref="AllocationBound"/>).
    /// </summary>
    private static (bool Ok, string Outcome) TryLoad(string path, int seed)
    {
        var task = Task.Factory.StartNew(() =>
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            string outcome;
            try
            {
                var model = new MLContext(seed: seed).LoadCMoEModel(path, out _);
                (model as IDisposable)?.Dispose();
                outcome = "loaded";
            }
            catch (CMoEFormatException e) { outcome = "rejected: " + e.Message; }
            catch (Exception e) { return (false, $"{e.GetType().Name}: {e.Message.Split('\n')[0]}"); }
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            return allocated > AllocationBound ? (false, $"allocated {allocated >> 20} MB ({outcome})") : (true, outcome);
        }, TaskCreationOptions.LongRunning);
        return task.Wait(TimeSpan.FromSeconds(60)) ? task.Result : (false, "no answer within 60 s");
    }

    /// <summary>The tiny model's scorer saved with parts of 64 KiB: its safetensors and tokenizer entries are chunked.</summary>
    private string ChunkedZip()
    {
        var ml = new MLContext(seed: 0);
        var rows = ml.Data.LoadFromEnumerable(new[] { new LanguageModelWorkoutTests.TextRow { Text = "hello" } });
        using var scorer = ml.Transforms.ScoreWithLanguageModel(_dir["tiny"], maxTokens: 16).Fit(rows);
        string zip = _dir["chunked.zip"];
        using (ModelPayload.UseChunkBytes(64 << 10)) ml.Model.Save(scorer, rows.Schema, zip);
        return zip;
    }

    [Fact]
    public void DamagedPartTablesFailWithClearMessages()
    {
        string zip = ChunkedZip();
        const string keyName = "TransformerChain/Model.key";
        byte[] key = ZipEditor.Read(zip, keyName);
        var table = ZipEditor.Table(key);
        var chunked = table.Where(e => e.Parts.Length > 1).ToList();
        chunked.Should().NotBeEmpty("the test needs entries in parts");
        TryLoad(zip, 0).Should().Be((true, "loaded"), "the unmutated chunked zip loads");
        string path = _dir["case.zip"];
        var failures = new List<string>();
        var kinds = new int[7];
        for (int i = 0; i < 200 * ParserFuzzTests.Scale; i++)
        {
            var rng = new Random(5000 + i);
            var entry = chunked[rng.Next(chunked.Count)];
            int part = rng.Next(entry.Parts.Length);
            string partName = $"TransformerChain/{ModelPayload.PartName(entry.Name, part)}";
            int kind = rng.Next(7);
            kinds[kind]++;
            byte[] body = (byte[])key.Clone();
            string what;
            switch (kind)
            {
                case 0:                                                                        // part count
                    int[] counts = [-1, 0, 1, entry.Parts.Length - 1, entry.Parts.Length + 1, ModelPayloadReader.MaxParts + 1, int.MaxValue, rng.Next()];
                    int count = counts[rng.Next(counts.Length)];
                    if (count == entry.Parts.Length) count++;
                    BitConverter.GetBytes(count).CopyTo(body, entry.PartCountAt);
                    ZipEditor.Edit(zip, path, keyName, body);
                    what = $"'{entry.Name}' part count {entry.Parts.Length} -> {count}";
                    break;
                case 1:                                                                        // a part length
                    long[] lengths = [0, -1, entry.Parts[part] - 1, entry.Parts[part] + 1, long.MaxValue, long.MinValue, rng.NextInt64(), entry.Length];
                    long length = lengths[rng.Next(lengths.Length)];
                    if (length == entry.Parts[part]) length++;
                    BitConverter.GetBytes(length).CopyTo(body, entry.PartAt[part]);
                    ZipEditor.Edit(zip, path, keyName, body);
                    what = $"'{entry.Name}' part {part} length {entry.Parts[part]} -> {length}";
                    break;
                case 2:                                                                        // the entry length
                    long[] totals = [entry.Length - 1, entry.Length + 1, -1, 0, long.MaxValue, entry.Parts[0]];
                    long total = totals[rng.Next(totals.Length)];
                    BitConverter.GetBytes(total).CopyTo(body, entry.LengthAt);
                    ZipEditor.Edit(zip, path, keyName, body);
                    what = $"'{entry.Name}' length {entry.Length} -> {total}";
                    break;
                case 3:                                                                        // a part missing
                    ZipEditor.Edit(zip, path, partName, null);
                    what = $"{partName} deleted";
                    break;
                case 4:                                                                        // a part renamed
                    string[] names = [ModelPayload.PartName(entry.Name, entry.Parts.Length + rng.Next(3)), entry.Name, entry.Name + ".part", $"{entry.Name}.part{part:D5}"];
                    string to = $"TransformerChain/{names[rng.Next(names.Length)]}";
                    ZipEditor.Edit(zip, path, partName, null, renameTo: to);
                    what = $"{partName} renamed {to}";
                    break;
                case 5:                                                                        // a part one byte short or long
                    byte[] bytes = ZipEditor.Read(zip, partName);
                    bytes = rng.Next(2) == 0 ? bytes[..^1] : [.. bytes, (byte)rng.Next(256)];
                    ZipEditor.Edit(zip, path, partName, bytes);
                    what = $"{partName} now {bytes.Length} bytes";
                    break;
                default:                                                                       // anything in our body
                    var mutated = new Mutator(6000 + i).Mutate(key[256..]);
                    ZipEditor.Edit(zip, path, keyName, [.. key[..256], .. mutated]);
                    what = "Model.key body mutated";
                    break;
            }
            var (ok, outcome) = TryLoad(path, i);
            if (i < 14) _output.WriteLine($"{what}: {outcome}");
            if (!ok) failures.Add($"case {i} ({what}): {outcome}");
            else if (kind < 6 && !(outcome.StartsWith("rejected", StringComparison.Ordinal) && outcome.Contains("corrupt") && outcome.Contains("Save")))
                failures.Add($"case {i} ({what}): expected a message naming the corrupt zip and the fix, got {outcome}");
        }
        failures.Should().BeEmpty($"kinds {string.Join(",", kinds)}");
        kinds.Should().OnlyContain(k => k > 0, "every kind of damage is tried");
    }

    [Fact]
    public void MutatedLowBitZipsFailWithCMoEFormatException()
    {
        var config = TinyCheckpoint.Config();
        config["vocab_size"] = 8192;
        config["hidden_size"] = 64;
        config["intermediate_size"] = 128;                             // experts of 32 neurons: int8 groups of 32
        string model = TinyCheckpoint.Write(_dir["tiny64"], config, seed: 3);
        foreach (var f in new[] { "tokenizer.model", "tokenizer_config.json" })
            File.Copy(Path.Combine(TestPaths.EmbeddedModel, f), Path.Combine(model, f));
        var ml = new MLContext(seed: 0);
        var text = string.Concat(Enumerable.Repeat("We the people of the United States, in order to form a more perfect union. ", 8));
        var rows = ml.Data.LoadFromEnumerable(new[] { new LanguageModelWorkoutTests.TextRow { Text = text } });
        string zip = _dir["int8.zip"];
        using (var carved = ml.Transforms.CarveMoE(new CarveMoEEstimator.Options
        {
            ModelFolder = model, Layout = "S1A1E4", CalibrationSamples = 2, CalibrationLength = 16, MaxTokens = 16,
            EmbeddingColumnName = null, Weights = WeightFormat.Int8,
        }).Fit(rows))
        {
            carved.Weights.Kind.Should().Be(WeightKind.Int8);
            ml.Model.Save(carved, rows.Schema, zip);
        }
        TryLoad(zip, 0).Should().Be((true, "loaded"), "the unmutated int8 zip loads");
        var entries = new[] { "lm-config.json", "lm-model.safetensors" }.Select(e => $"TransformerChain/{e}").ToArray();
        var safetensors = ZipEditor.Read(zip, entries[1]);
        int headerEnd = 8 + (int)BitConverter.ToUInt64(safetensors, 0);
        Encoding.UTF8.GetString(safetensors, 8, headerEnd - 8).Should().Contain("\"I8\"", "the zip stores int8 values");
        byte[] key = ZipEditor.Read(zip, "TransformerChain/Model.key");
        var seedZip = File.ReadAllBytes(zip);
        string path = _dir["case.zip"];
        var unexpected = new List<string>();
        int loaded = 0, rejected = 0;
        for (int i = 0; i < 300 * ParserFuzzTests.Scale; i++)
        {
            var mutator = new Mutator(7000 + i);
            switch (i % 3)
            {
                case 0: File.WriteAllBytes(path, mutator.Mutate(seedZip)); break;                           // the zip's bytes
                case 1:                                                                                     // config.json (cmoe.weights, ...)
                    var configBytes = mutator.Mutate(ZipEditor.Read(zip, entries[0]));
                    ZipEditor.Edit(zip, path, entries[0], configBytes);
                    ZipEditor.Edit(path, path, "TransformerChain/Model.key", ZipEditor.WithLength(key, "lm-config.json", configBytes.Length));
                    break;
                default:                                                                                    // the safetensors header (I8 values, F32 scales)
                    byte[] file = [.. mutator.Mutate(safetensors[..headerEnd]), .. safetensors[headerEnd..]];
                    ZipEditor.Edit(zip, path, entries[1], file);
                    ZipEditor.Edit(path, path, "TransformerChain/Model.key", ZipEditor.WithLength(key, "lm-model.safetensors", file.Length));
                    break;
            }                                                                                               // (the table lists the new lengths)
            var (ok, outcome) = TryLoad(path, i);
            if (i < 9) _output.WriteLine($"case {i}: {outcome}");
            if (!ok) unexpected.Add($"case {i}: {outcome}");
            else if (outcome == "loaded") loaded++;
            else rejected++;
        }
        _output.WriteLine($"{loaded} loaded, {rejected} rejected");
        unexpected.Should().BeEmpty($"{loaded} loaded, {rejected} rejected");
        rejected.Should().BeGreaterThan(100 * ParserFuzzTests.Scale, "most mutations damage the zip, config.json or the safetensors header");

        // Edits a hostile or newer writer could make to the low-bit records: each is refused with its own message.
        string configText = Encoding.UTF8.GetString(ZipEditor.Read(zip, entries[0]));
        string header = Encoding.UTF8.GetString(safetensors, 8, headerEnd - 8);
        string scaleKey = System.Text.RegularExpressions.Regex.Match(header, "\"([^\"]+)_scale\"").Groups[1].Value;
        scaleKey.Should().NotBeEmpty("int8 weights come with their scales");
        (string Entry, string From, string To, string Expected)[] edits =
        [
            (entries[0], "\"weights\": \"int8\"", "\"weights\": \"int4\"", "int4"),
            (entries[0], "\"version\": 2", "\"version\": 9", "Upgrade CMoE.MLNet"),
            (entries[1], $"\"{scaleKey}_scale\"", $"\"{scaleKey}_scalf\"", "scales"),
            (entries[1], "\"I8\"", "\"I16\"", "bytes"),
        ];
        foreach (var (entry, from, to, expected) in edits)
        {
            byte[] edited = entry == entries[0]
                ? Encoding.UTF8.GetBytes(configText.Replace(from, to))
                : WithHeader(safetensors, headerEnd, ReplaceFirst(header.TrimEnd(' '), from, to));
            (entry == entries[0] ? configText : header).Should().Contain(from);
            ZipEditor.Edit(zip, path, entry, edited);
            ZipEditor.Edit(path, path, "TransformerChain/Model.key", ZipEditor.WithLength(key, entry["TransformerChain/".Length..], edited.Length));
            var (ok, outcome) = TryLoad(path, 1);
            _output.WriteLine($"{from} -> {to}: {outcome}");
            ok.Should().BeTrue(outcome);
            outcome.Should().StartWith("rejected").And.Contain(expected);
        }
    }

    /// <summary>A safetensors file's bytes with its header replaced by <paramref name="json"/> (padded to 8 bytes), data unchanged.</summary>
    private static byte[] WithHeader(byte[] file, int headerEnd, string json)
    {
        byte[] h = Encoding.UTF8.GetBytes(json.PadRight((json.Length + 7) / 8 * 8));
        return [.. BitConverter.GetBytes((ulong)h.Length), .. h, .. file[headerEnd..]];
    }

    private static string ReplaceFirst(string text, string from, string to)
    {
        int at = text.IndexOf(from, StringComparison.Ordinal);
        return text[..at] + to + text[(at + from.Length)..];
    }

    [Fact]
    public void MutatedZipsFailWithCMoEFormatException()
    {
        var seed = File.ReadAllBytes(_zip);
        string path = _dir["case.zip"];
        var unexpected = new List<string>();
        int loaded = 0, rejected = 0;
        for (int i = 0; i < 300 * ParserFuzzTests.Scale; i++)
        {
            File.WriteAllBytes(path, new Mutator(1000 + i).Mutate(seed));
            try
            {
                var model = new MLContext(seed: 1).LoadCMoEModel(path, out _);
                (model as IDisposable)?.Dispose();
                loaded++;
            }
            catch (CMoEFormatException) { rejected++; }
            catch (Exception e) { unexpected.Add($"case {i}: {e.GetType().Name}: {e.Message.Split('\n')[0]}"); }
        }
        unexpected.Should().BeEmpty($"{loaded} loaded, {rejected} rejected");
    }

    [Fact]
    public void AnEntryNameThatClimbsOutOfTheFolderIsRejected()
    {
        string hostile = _dir["hostile.zip"];
        File.Copy(_zip, hostile);
        bool patched = false;
        using (var archive = ZipFile.Open(hostile, ZipArchiveMode.Update))
        {
            foreach (var entry in archive.Entries.Where(e => e.Name == "Model.key").ToList())
            {
                byte[] body;
                using (var s = entry.Open()) { using var m = new MemoryStream(); s.CopyTo(m); body = m.ToArray(); }
                byte[] from = Encoding.UTF8.GetBytes("config.json"), to = Encoding.UTF8.GetBytes("../fig.json");   // same length
                int at = body.AsSpan().IndexOf(from);
                if (at < 0) continue;
                to.CopyTo(body, at);
                string name = entry.FullName;
                entry.Delete();
                using var w = archive.CreateEntry(name).Open();
                w.Write(body);
                patched = true;
            }
        }
        patched.Should().BeTrue("the test must find the model file list to tamper with");
        var act = () => new MLContext(seed: 2).LoadCMoEModel(hostile, out _);
        act.Should().Throw<CMoEFormatException>().WithMessage("*invalid file '../fig.json'*");
        File.Exists(Path.Combine(Path.GetTempPath(), "fig.json")).Should().BeFalse();
    }
}
