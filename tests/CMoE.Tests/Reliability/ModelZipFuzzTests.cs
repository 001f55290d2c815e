using System.IO.Compression;
using System.Text;
using CMoE.MLNet;
using CMoE.Tests.MLNet;
using CMoE.Tests.Modeling;
using Microsoft.ML;

namespace CMoE.Tests.Reliability;

/// <summary>Model zips from elsewhere: mutated bytes and hostile entry names fail with our own exception, nothing escapes.</summary>
public sealed class ModelZipFuzzTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly string _zip;

    public ModelZipFuzzTests()
    {
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
