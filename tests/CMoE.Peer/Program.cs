using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using CMoE.Carving;
using CMoE.Cli.Bench;
using CMoE.Cli.Commands;
using CMoE.Evaluation;
using CMoE.Modeling;
using CMoE.Modeling.Backend;
using CMoE.Modeling.IO;
using CMoE.Modeling.Tokenization;
using CMoE.Modeling.Weights;
using static TorchSharp.torch;

namespace CMoE.Peer;

/// <summary>
/// The llama.cpp peer benchmark (docs/benchmarks.md, "Against llama.cpp (LLamaSharp)"). Speed, in one process:
/// <c>dotnet run -c Release --project tests/CMoE.Peer -- --model ../shared/models/tinyref-llama --threads 1,2
/// [--layout S2A2E16] [--prompt-tokens 512] [--decode-tokens 128] [--repeats 3] [--text sotu_val.txt] [--json] [--peer-only]</c> (--peer-only: llama.cpp alone, libtorch never loaded);
/// the numeric oracle: <c>... -- perplexity --model ... --text ../shared/data/eval/sotu_val.txt [--windows 8] [--seq-len 512]</c>;
/// the oracle per family: <c>... -- families [--tokenizer ../shared/models/tinyref-llama] [--windows 16] [--seq-len 256] [--only qwen3-tiny,...]</c>
/// (a tiny random model of each supported family, written in its Hugging Face layout, converted as llama.cpp's converter does,
/// perplexity ours vs llama.cpp; exit 1 when any differs beyond 1e-5 relative).
/// </summary>
internal static class Program
{
    private static int Main(string[] argv)
    {
        try
        {
            bool perplexity = argv.Length > 0 && argv[0] == "perplexity", families = argv.Length > 0 && argv[0] == "families";
            var args = Args.Parse(perplexity || families ? argv[1..] : argv);
            LlamaCpp.Configure();
            return families ? Families(args) : perplexity ? Perplexity(args) : Speed(args);
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine("cmoe-peer: " + e.Message);
            Console.Error.WriteLine("usage: dotnet run -c Release --project tests/CMoE.Peer -- [perplexity] --model <dense-hf-folder> [--threads 1,2] [--layout S2A2E16] " +
                                    "[--prompt-tokens 512] [--decode-tokens 128] [--repeats 3] [--text <file>] [--windows 8] [--json]");
            return 2;
        }
    }

    private static string DefaultText(string model) => Path.GetFullPath(Path.Combine(model, "..", "..", "data", "eval", "sotu_val.txt"));

    /// <summary>A temporary folder holding the GGUFs of <paramref name="model"/>, deleted on dispose.</summary>
    private sealed class GgufFolder : IDisposable
    {
        public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"cmoe-peer-{Environment.ProcessId}");
        public GgufFolder() => Directory.CreateDirectory(Path);
        public string Write(string model, GgufTensorType type)
        {
            string file = System.IO.Path.Combine(Path, $"model-{type}.gguf");
            var clock = Stopwatch.StartNew();
            GgufWriter.Write(model, file, type);
            Console.Error.WriteLine($"peer: wrote {file} ({new FileInfo(file).Length / 1e6:F1} MB, {clock.Elapsed.TotalSeconds:F1} s)");
            return file;
        }
        public void Dispose() => Directory.Delete(Path, recursive: true);
    }

    private static int Speed(Args a)
    {
        string model = a.Required("model");
        var threadCounts = a.Get("threads", "1,2").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        var layout = MoeLayout.Parse(a.Get("layout", "S2A2E16"));
        int promptTokens = a.Int("prompt-tokens", 512), decodeTokens = a.Int("decode-tokens", 128), repeats = a.Int("repeats", 3);
        string textPath = a.Get("text", DefaultText(model));
        bool json = a.Flag("json");
        bool peerOnly = a.Flag("peer-only");   // diagnostic: llama.cpp alone, libtorch never loaded in the process
        a.RejectUnknown();
        if (promptTokens + decodeTokens > 1024) throw new ArgumentException("--prompt-tokens + --decode-tokens must fit llama.cpp's context of 1024");

        var clock = Stopwatch.StartNew();
        using var ggufs = new GgufFolder();
        string f32 = ggufs.Write(model, GgufTensorType.F32), q8 = ggufs.Write(model, GgufTensorType.Q8_0);

        var tokenizer = TokenizerLoader.FromFolder(model);
        var stream = tokenizer.Encode(File.ReadAllText(textPath), addBos: true);
        if (stream.Length < promptTokens) throw new ArgumentException($"'{textPath}' has {stream.Length} tokens, fewer than --prompt-tokens {promptTokens}");
        int[] promptIds = stream[..promptTokens];                                      // BOS + the file's first tokens

        var ours = peerOnly ? [] : LoadOurs(model, layout, threadCounts.Max());
        using var noGrad = peerOnly ? null : no_grad();
        using var prompt = peerOnly ? null : tensor(promptIds.Select(i => (long)i).ToArray(), [1, promptTokens]);   // [1, P]

        var machine = peerOnly ? Machine() : BenchCommand.MachineFacts(threadCounts.Max(), CPU);
        var report = new JsonObject
        {
            ["machine"] = machine,
            ["llama_cpp"] = $"LLamaSharp {LlamaCpp.PackageVersion()}, {LlamaCpp.SystemInfo()}",
            ["model"] = Path.GetFullPath(model),
            ["layout"] = layout.ToString(),
            ["prompt"] = $"{promptTokens} ids of {Path.GetFileName(textPath)} (our tokenizer; the same ids fed to llama.cpp)",
            ["decode_tokens"] = decodeTokens,
            ["repeats"] = repeats,
            ["runs"] = new JsonArray(),
        };
        var lines = new List<string>();
        foreach (int threads in threadCounts)
        {
            if (!peerOnly) TorchRuntime.SetThreads(threads);
            using var peerF32 = LlamaCpp.ForSpeed(f32, threads);
            using var peerQ8 = LlamaCpp.ForSpeed(q8, threads);
            var rows = new List<Row>
            {
                new("llama.cpp", "F32", (d, ids) => peerF32.Generate(promptIds, d, ids)),
                new("llama.cpp", "Q8_0", (d, ids) => peerQ8.Generate(promptIds, d, ids)),
            };
            foreach (var o in ours) rows.Add(new(o.Name, o.Weights, (d, ids) => InferenceBench.Generate(o.Model, prompt!, d, ids)));
            // Peer and ours alternate: F32, dense fp32, Q8_0, dense int8, then the carved rows; odd repetitions run backwards.
            var order = peerOnly ? rows.ToArray() : new[] { rows[0], rows[2], rows[1], rows[3], rows[4], rows[5] };

            int check = Math.Min(16, decodeTokens);
            List<long> peerIds = [], ourIds = [];
            rows[0].Run(check, peerIds);                                               // warm-up (untimed), with the ids
            if (!peerOnly) rows[2].Run(check, ourIds);
            foreach (var r in order.Where(r => r != rows[0] && (peerOnly || r != rows[2]))) r.Run(check, null);
            for (int rep = 0; rep < repeats; rep++)
            {
                foreach (var r in rep % 2 == 0 ? order : order.Reverse())
                {
                    var (prefill, decode) = r.Run(decodeTokens, null);
                    r.Prefill.Add(promptTokens / prefill);
                    r.Decode.Add(decodeTokens / decode);
                }
                Console.Error.WriteLine($"peer: threads {threads}, repetition {rep + 1}/{repeats} done");
            }
            int agree = peerIds.Zip(ourIds).TakeWhile(p => p.First == p.Second).Count();
            var peer = rows[1];
            lines.Add($"threads {threads}; llama.cpp {peerQ8.Settings}");
            lines.Add($"{"",-26}{"weights",-8}{"prefill tok/s [min-max]",26}{"decode tok/s [min-max]",26}{"prefill/Q8_0",14}{"decode/Q8_0",13}");
            var run = new JsonObject { ["threads"] = threads, ["llama_cpp_settings"] = peerQ8.Settings, ["rows"] = new JsonArray() };
            foreach (var r in rows)
            {
                double pr = Median(r.Prefill) / Median(peer.Prefill), dr = Median(r.Decode) / Median(peer.Decode);
                lines.Add($"{r.Name,-26}{r.Weights,-8}{Figure(r.Prefill),26}{Figure(r.Decode),26}{pr,13:F2}x{dr,12:F2}x");
                ((JsonArray)run["rows"]!).Add(new JsonObject
                {
                    ["name"] = r.Name, ["weights"] = r.Weights,
                    ["prefill_tokens_per_s"] = Stats(r.Prefill), ["decode_tokens_per_s"] = Stats(r.Decode),
                    ["prefill_vs_llama_cpp_q8_0"] = Math.Round(pr, 3), ["decode_vs_llama_cpp_q8_0"] = Math.Round(dr, 3),
                });
            }
            if (!peerOnly) lines.Add($"greedy ids, first {check} decode steps: ours dense fp32 and llama.cpp F32 agree on {agree}/{check}" +
                      (agree == check ? "" : $" (ours {string.Join(",", ourIds)}; llama.cpp {string.Join(",", peerIds)})"));
            run["greedy_ids_agree"] = $"{agree}/{check}";
            ((JsonArray)report["runs"]!).Add(run);
        }
        foreach (var o in ours) o.Model.Dispose();
        report["seconds"] = Math.Round(clock.Elapsed.TotalSeconds, 1);
        if (json)
        {
            Console.WriteLine(report.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }
        Console.WriteLine($"machine:   {machine["processor"]}, {machine["logical_cores"]} logical cores, {machine["os"]}, .NET {machine["dotnet"]}");
        Console.WriteLine($"llama.cpp: {report["llama_cpp"]}");
        Console.WriteLine($"model:     {report["model"]} (dense; GGUF F32 and Q8_0 written by GgufWriter), carved {layout} in memory");
        Console.WriteLine($"run:       prompt {report["prompt"]}, {decodeTokens} greedy decode steps, medians of {repeats} interleaved repetitions after a warm-up");
        foreach (var l in lines) Console.WriteLine(l);
        Console.WriteLine($"({clock.Elapsed.TotalSeconds:F0} s)");
        return 0;
    }

    /// <summary>Our dense and carved models, fp32 and int8 (carved in memory on random ids, as cmoe bench without --calibration).</summary>
    private static (string Name, string Weights, LlamaForCausalLM Model)[] LoadOurs(string model, MoeLayout layout, int threads)
    {
        TorchRuntime.SetThreads(threads);
        using var noGrad = no_grad();
        Console.Error.WriteLine($"peer: loading ours, carving {layout} in memory (random calibration, as cmoe bench)");
        var denseFp32 = ModelFolder.Load(model);
        var carvedFp32 = ModelFolder.Load(model);
        using (var calibration = BenchCommand.RandomCalibration(carvedFp32.Config, 8, 128, 0))
            BenchCommand.CarveInMemory(carvedFp32, layout, calibration, CancellationToken.None);
        var denseInt8 = ModelConversion.Convert(denseFp32, WeightFormat.Int8);
        var carvedInt8 = ModelConversion.Convert(carvedFp32, WeightFormat.Int8);
        var ours = new (string Name, string Weights, LlamaForCausalLM Model)[]
        {
            ("ours dense", "fp32", denseFp32), ("ours dense", "int8", denseInt8),
            ($"ours carved {layout}", "fp32", carvedFp32), ($"ours carved {layout}", "int8", carvedInt8),
        };
        foreach (var o in ours) o.Model.eval();
        return ours;
    }

    /// <summary>The machine line without touching libtorch (--peer-only).</summary>
    private static JsonObject Machine()
    {
        string cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "unknown";
        return new JsonObject
        {
            ["processor"] = cpu, ["logical_cores"] = Environment.ProcessorCount,
            ["os"] = System.Runtime.InteropServices.RuntimeInformation.OSDescription, ["dotnet"] = Environment.Version.ToString(),
        };
    }

    private static int Perplexity(Args a)
    {
        string model = a.Required("model");
        string textPath = a.Get("text", DefaultText(model));
        int windows = a.Int("windows", 8), seqLen = a.Int("seq-len", 512), threads = a.Int("threads", Environment.ProcessorCount);
        a.RejectUnknown();
        TorchRuntime.SetThreads(threads);
        using var ggufs = new GgufFolder();
        string f32 = ggufs.Write(model, GgufTensorType.F32);
        var stream = TokenizerLoader.FromFolder(model).Encode(File.ReadAllText(textPath), addBos: true);   // BOS + whole file, as ours
        var w = PerplexityEvaluator.Windows(stream, seqLen, windows);
        int n = w.GetLength(0);

        double peerSum = 0;
        using (var peer = LlamaCpp.ForPerplexity(f32, threads, seqLen))
        {
            Console.WriteLine($"llama.cpp: {peer.Settings}");
            for (int i = 0; i < n; i++) peerSum += peer.WindowNll(Enumerable.Range(0, seqLen).Select(t => w[i, t]).ToArray());
        }
        double peerPpl = Math.Exp(peerSum / (n * (seqLen - 1L)));
        using var dense = ModelFolder.Load(model);
        dense.eval();
        var ours = PerplexityEvaluator.Evaluate(dense, stream, seqLen, windows);
        Console.WriteLine($"text:      {Path.GetFullPath(textPath)}, {n} windows of {seqLen} (BOS + whole-file ids from our tokenizer; NLL of positions 1..{seqLen - 1})");
        Console.WriteLine($"ours fp32:      perplexity {ours.Perplexity:F6}");
        Console.WriteLine($"llama.cpp F32:  perplexity {peerPpl:F6}");
        double rel = Math.Abs(ours.Perplexity - peerPpl) / peerPpl;
        Console.WriteLine($"relative difference {rel:E2} ({(rel <= 1e-5 ? "agree to 1e-5" : "DISAGREE beyond 1e-5")})");
        return rel <= 1e-5 ? 0 : 1;
    }

    /// <summary>Per family: a tiny random model (spread weights), its GGUF F32, perplexity ours vs llama.cpp on the same ids.</summary>
    private static int Families(Args a)
    {
        string tokenizerFolder = a.Get("tokenizer", Path.Combine("..", "shared", "models", "tinyref-llama"));
        string textPath = a.Get("text", DefaultText(tokenizerFolder));
        int windows = a.Int("windows", 16), seqLen = a.Int("seq-len", 256), threads = a.Int("threads", Environment.ProcessorCount), seed = a.Int("seed", 7);
        var names = a.Get("only", string.Join(",", SyntheticModels.FamilyShapes)).Split(',');
        a.RejectUnknown();
        TorchRuntime.SetThreads(threads);
        var stream = TokenizerLoader.FromFolder(tokenizerFolder).Encode(File.ReadAllText(textPath), addBos: true);
        var w = PerplexityEvaluator.Windows(stream, seqLen, windows);
        int n = w.GetLength(0);
        Console.WriteLine($"text: {Path.GetFullPath(textPath)}, {n} windows of {seqLen} (BOS + whole-file ids, tinyref's tokenizer); seeds {seed}, {seed + 1}, ... in order");
        Console.WriteLine($"{"shape",-14}{"architecture",-22}{"ours fp32",14}{"llama.cpp F32",16}{"relative",11}");
        using var ggufs = new GgufFolder();
        bool allAgree = true;
        foreach (string name in names)
        {
            var config = SyntheticModels.Get(name);
            // Not named after the family: llama.cpp's vocabulary loader special-cases models whose general.name contains
            // "phi3" (it looks up Phi-3's own special tokens, which tinyref's vocabulary lacks).
            string folder = Path.Combine(ggufs.Path, $"tiny-model-{Array.IndexOf(names, name)}");
            SyntheticModels.WriteFolder(config, folder, seed + Array.IndexOf(names, name), tokenizerFolder, spread: true);
            string gguf = Path.Combine(ggufs.Path, name + ".gguf");
            GgufWriter.Write(folder, gguf, GgufTensorType.F32);
            double peerSum = 0;
            using (var peer = LlamaCpp.ForPerplexity(gguf, threads, seqLen))
                for (int i = 0; i < n; i++) peerSum += peer.WindowNll(Enumerable.Range(0, seqLen).Select(t => w[i, t]).ToArray());
            double peerPpl = Math.Exp(peerSum / (n * (seqLen - 1L)));
            double ours;
            using (var model = ModelFolder.Load(folder))
            {
                model.eval();
                ours = PerplexityEvaluator.Evaluate(model, stream, seqLen, windows).Perplexity;
            }
            double rel = Math.Abs(ours - peerPpl) / peerPpl;
            if (config.Activation == GatedActivation.GeluTanh)
            {
                // llama.cpp's CPU GELU reads a half-precision table; the exact comparison uses ours with the same table.
                Console.WriteLine($"{name,-14}{config.Architecture,-22}{ours,14:F6}{peerPpl,16:F6}{rel,11:E2}  (our exact GELU; llama.cpp's is an fp16 table)");
                GatedActivations.EmulateLlamaCppGelu = true;
                try
                {
                    using var model = ModelFolder.Load(folder);
                    model.eval();
                    ours = PerplexityEvaluator.Evaluate(model, stream, seqLen, windows).Perplexity;
                }
                finally { GatedActivations.EmulateLlamaCppGelu = false; }
                rel = Math.Abs(ours - peerPpl) / peerPpl;
            }
            allAgree &= rel <= 1e-5;
            string label = config.Activation == GatedActivation.GeluTanh ? name + " *" : name;
            Console.WriteLine($"{label,-14}{config.Architecture,-22}{ours,14:F6}{peerPpl,16:F6}{rel,11:E2}{(rel <= 1e-5 ? "" : "  DISAGREE beyond 1e-5")}");
        }
        Console.WriteLine("* ours with llama.cpp's fp16 GELU table (GatedActivations.EmulateLlamaCppGelu)");
        return allAgree ? 0 : 1;
    }

    /// <summary>One benchmarked engine and weight format, with its samples (tokens/s).</summary>
    private sealed class Row(string name, string weights, Func<int, List<long>?, (double Prefill, double Decode)> run)
    {
        public string Name { get; } = name;
        public string Weights { get; } = weights;
        public List<double> Prefill { get; } = [];
        public List<double> Decode { get; } = [];
        public (double Prefill, double Decode) Run(int decodeTokens, List<long>? ids) => run(decodeTokens, ids);
    }

    private static string Figure(List<double> v) => $"{Median(v):F1} [{v.Min():F0}-{v.Max():F0}]";

    private static JsonObject Stats(List<double> v) => new()
    {
        ["median"] = Math.Round(Median(v), 2), ["min"] = Math.Round(v.Min(), 2), ["max"] = Math.Round(v.Max(), 2),
    };

    private static double Median(List<double> values)
    {
        var s = values.OrderBy(x => x).ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}

/// <summary><c>--name value</c> and <c>--flag</c> arguments.</summary>
internal sealed class Args
{
    private readonly Dictionary<string, string?> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    public static Args Parse(string[] argv)
    {
        var a = new Args();
        for (int i = 0; i < argv.Length; i++)
        {
            if (!argv[i].StartsWith("--", StringComparison.Ordinal)) throw new ArgumentException($"unexpected argument '{argv[i]}'");
            string name = argv[i][2..];
            a._values[name] = i + 1 < argv.Length && !argv[i + 1].StartsWith("--", StringComparison.Ordinal) ? argv[++i] : null;
        }
        return a;
    }

    public string Required(string name) => Get(name, null) ?? throw new ArgumentException($"--{name} is required");

    public string Get(string name, string? fallback)
    {
        _used.Add(name);
        return _values.TryGetValue(name, out var v) ? v ?? throw new ArgumentException($"--{name} needs a value") : fallback!;
    }

    public int Int(string name, int fallback)
    {
        string? v = Get(name, fallback.ToString(CultureInfo.InvariantCulture));
        return int.TryParse(v, CultureInfo.InvariantCulture, out int n) && n > 0 ? n : throw new ArgumentException($"--{name} needs a positive integer (got '{v}')");
    }

    public bool Flag(string name)
    {
        _used.Add(name);
        return _values.ContainsKey(name);
    }

    public void RejectUnknown()
    {
        var unknown = _values.Keys.Where(k => !_used.Contains(k)).ToList();
        if (unknown.Count > 0) throw new ArgumentException($"unknown option(s): {string.Join(", ", unknown.Select(k => "--" + k))}");
    }
}
