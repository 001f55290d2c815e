using System.Text.Json.Nodes;
using CMoE.Carving;
using CMoE.Modeling;
using CMoE.Modeling.IO;
using CMoE.Modeling.Tokenization;
using CMoE.Tests.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Tests.Reliability;

/// <summary>
/// Seeded mutation fuzzing of every file format we parse. Each mutated input must either parse or fail
/// with <see cref="CMoEFormatException"/> (our own type, with a message) — never another exception,
/// a crash, a hang or a huge allocation. CI runs the counts below (2,000+ inputs in all);
/// set CMOE_FUZZ_SCALE=10 (or more) to run more on demand.
/// </summary>
public class ParserFuzzTests
{
    internal static readonly int Scale = int.TryParse(Environment.GetEnvironmentVariable("CMOE_FUZZ_SCALE"), out int s) && s > 0 ? s : 1;

    private static void Fuzz(string name, byte[] seedInput, int cases, Action<byte[]> parse)
    {
        var unexpected = new List<string>();
        int parsed = 0, rejected = 0;
        for (int i = 0; i < cases * Scale; i++)
        {
            var input = new Mutator(i).Mutate(seedInput);
            try
            {
                parse(input);
                parsed++;
            }
            catch (CMoEFormatException e) when (e.Message.Length > 20)
            {
                rejected++;
            }
            catch (Exception e)
            {
                if (unexpected.Count < 5) unexpected.Add($"case {i}: {e.GetType().Name}: {e.Message.Split('\n')[0]}");
                else unexpected.Add("");
            }
        }
        unexpected.Should().BeEmpty($"every malformed {name} must fail with CMoEFormatException ({parsed} parsed, {rejected} rejected)");
        (parsed + rejected).Should().Be(cases * Scale);
    }

    [Fact]
    public void SafetensorsFuzz()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        using (var a = randn(3, 4))
        using (var b = tensor(new long[] { 1, 2, 3 }))
        using (var c = ones(2, 2, dtype: ScalarType.BFloat16))
            SafeTensorsWriter.Write(dir["seed.safetensors"], [new("a", a), new("b", b), new("c.weight", c)], new Dictionary<string, string> { ["format"] = "pt" });
        var seed = File.ReadAllBytes(dir["seed.safetensors"]);
        string path = dir["case.safetensors"];
        Fuzz("safetensors file", seed, 800, bytes =>
        {
            File.WriteAllBytes(path, bytes);
            using var file = SafeTensorsFile.Open(path);
            foreach (var name in file.Tensors.Keys)
                using (file.Load(name, ScalarType.Float32)) { }
        });
    }

    [Fact]
    public void ConfigJsonFuzz()
    {
        using var dir = new TempDir();
        var seed = File.ReadAllBytes(Path.Combine(TestPaths.EmbeddedModel, "config.json"));
        string path = dir["config.json"];
        Fuzz("config.json", seed, 500, bytes =>
        {
            File.WriteAllBytes(path, bytes);
            LlamaConfig.Load(path);
        });
    }

    [Fact]
    public void CarvedConfigFuzz()
    {
        TorchTestSetup.Pin();
        using var dir = new TempDir();
        var config = TinyCheckpoint.Config();
        TinyCheckpoint.Write(dir["dense"], config);
        using (var model = ModelFolder.Load(dir["dense"]))
        using (var calibration = randint(0, 50, [2, 16], dtype: ScalarType.Int64))
        {
            MoeCarver.Carve(model, calibration, new CarveOptions { Layout = MoeLayout.Parse("S1A1E4"), KAct = 4 });
            CarvedFolder.Save(model, dir["dense"], dir["carved"], "S1A1E4");
        }
        var seed = File.ReadAllBytes(dir["carved/config.json"]);
        Fuzz("carved config.json", seed, 300, bytes =>
        {
            File.WriteAllBytes(dir["carved/config.json"], bytes);
            using var loaded = ModelFolder.Load(dir["carved"]);
        });
    }

    [Fact]
    public void TokenizerJsonFuzz()
    {
        using var dir = new TempDir();
        var seed = System.Text.Encoding.UTF8.GetBytes(SmallTokenizerJson().ToJsonString());
        string path = dir["tokenizer.json"];
        Fuzz("tokenizer.json", seed, 500, bytes =>
        {
            File.WriteAllBytes(path, bytes);
            var tokenizer = TokenizerLoader.FromFolder(dir.Path, TokenizerFile.TokenizerJson);
            tokenizer.Encode("Hello wörld 🙂", addBos: true);
        });
    }

    /// <summary>A small SentencePiece-style BPE tokenizer.json with byte fallback, shaped like Llama-2's.</summary>
    private static JsonObject SmallTokenizerJson()
    {
        var vocab = new JsonObject { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 };
        for (int b = 0; b < 256; b++) vocab[$"<0x{b:X2}>"] = 3 + b;
        string[] pieces = ["▁", "H", "e", "l", "o", "w", "r", "d", "ö", "He", "ll", "▁w", "▁He", "llo", "▁Hello"];
        foreach (var p in pieces) vocab[p] = vocab.Count;
        return new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(
                new JsonObject { ["id"] = 0, ["content"] = "<unk>", ["special"] = true },
                new JsonObject { ["id"] = 1, ["content"] = "<s>", ["special"] = true },
                new JsonObject { ["id"] = 2, ["content"] = "</s>", ["special"] = true }),
            ["normalizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["normalizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Prepend", ["prepend"] = "▁" },
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = "▁" }),
            },
            ["pre_tokenizer"] = null,
            ["post_processor"] = null,
            ["decoder"] = null,
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["unk_token"] = "<unk>",
                ["byte_fallback"] = true,
                ["fuse_unk"] = true,
                ["vocab"] = vocab,
                ["merges"] = new JsonArray("H e", "l l", "▁ w", "▁ He", "ll o", "▁He llo"),
            },
        };
    }
}
