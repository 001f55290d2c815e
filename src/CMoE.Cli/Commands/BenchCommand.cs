using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using CMoE.Carving;
using CMoE.Cli.Bench;
using CMoE.Modeling;
using CMoE.Modeling.IO;
using CMoE.Modeling.MoE;
using CMoE.Modeling.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Cli.Commands;

/// <summary><c>cmoe bench</c>: dense vs carved inference speed, side by side in one run.</summary>
internal sealed class BenchCommand : ICommand
{
    private readonly Option<string?> _model = CliOptions.Optional("--model", "dense-hf-folder", "the dense model (or give --synthetic)");
    private readonly Option<string?> _carved = CliOptions.Optional("--carved", "carved-folder", "a carved folder of --model (default: carve a copy in memory)");
    private readonly Option<string?> _synthetic = CliOptions.Optional("--synthetic", string.Join("|", SyntheticModels.Shapes.Keys), "build this shape with random weights instead of --model");
    private readonly Option<string?> _layout = CliOptions.Optional("--layout", "S2A2E16", "layout of the in-memory carve (default S2A2E16)");
    private readonly Option<string?> _calibration = CliOptions.Optional("--calibration", "text", "calibration text of the in-memory carve (default: random tokens)");
    private readonly Option<int> _samples = CliOptions.Int("--samples", 8, "calibration windows", min: 1);
    private readonly Option<int> _seqLen = CliOptions.Int("--seq-len", 128, "tokens per calibration window", min: 2);
    private readonly Option<int> _promptTokens = CliOptions.Int("--prompt-tokens", 512, "prompt length of the prefill figure", min: 1);
    private readonly Option<int> _decodeTokens = CliOptions.Int("--decode-tokens", 128, "tokens decoded per run", min: 1);
    private readonly Option<int> _batch = CliOptions.Int("--batch", 1, "sequences per prefill", min: 1);
    private readonly Option<int> _repeats = CliOptions.Int("--repeats", 3, "repetitions (medians are reported)", min: 1);
    private readonly Option<int?> _ffnLayer = CliOptions.OptionalInt("--ffn-layer", "layer whose FFN is timed alone (default: the middle one)", min: 0);
    private readonly Option<int> _ffnTokens = CliOptions.Int("--ffn-tokens", 64, "tokens of the FFN-alone figure", min: 1);
    private readonly Option<int> _seed = CliOptions.Int("--seed", 0, "seed of random weights and calibration");

    public string Name => "bench";

    public string Summary => "measure dense vs carved inference speed (prefill, decode, FFN alone)";

    public string Details => """
        Give --model <dense-hf-folder> (with or without --carved) or --synthetic <shape>.
        Without --carved, a copy of the dense model is carved in memory to --layout, calibrated on --calibration
        (or on random tokens when none is given: routing, not quality, is what speed depends on).
        --synthetic builds the named shape with random weights (tinyllama-4l: TinyLlama-1.1B's layer shape,
        4 layers, vocab 8192). Figures are medians over --repeats repetitions (dense and carved alternate
        first) after one warm-up; the FFN figures time layer --ffn-layer's FFN alone on its real inputs.
        --weights stores both models' weights in that format (carving runs in fp32 first; with --carved both folders
        load straight into it, so a model too large for memory in fp32 can be benched); the report gives the weight
        bytes each decoded token reads, the bandwidth that achieves and the machine's probed read bandwidth.
        --threads defaults to the machine's cores.
        """;

    public IEnumerable<Option> Options =>
    [
        _model, _carved, _synthetic, _layout, _calibration, _samples, _seqLen, _promptTokens, _decodeTokens, _batch, _repeats,
        _ffnLayer, _ffnTokens, _seed, CommonOptions.WeightsOption, .. CommonOptions.Runtime, CommonOptions.JsonOption,
    ];

    public int Run(ParseResult line, CancellationToken cancel)
    {
        string? modelDir = line.GetValue(_model);
        string? carvedDir = line.GetValue(_carved);
        string? synthetic = line.GetValue(_synthetic);
        string? layoutText = line.GetValue(_layout);
        string? calibrationPath = line.GetValue(_calibration);
        int samples = line.GetValue(_samples);
        int seqLen = line.GetValue(_seqLen);
        int promptTokens = line.GetValue(_promptTokens);
        int decodeTokens = line.GetValue(_decodeTokens);
        int batch = line.GetValue(_batch);
        int repeats = line.GetValue(_repeats);
        int? ffnLayerOption = line.GetValue(_ffnLayer);
        int ffnTokens = line.GetValue(_ffnTokens);
        int seed = line.GetValue(_seed);
        bool json = line.GetValue(CommonOptions.JsonOption);
        var device = CommonOptions.Device(line);
        var weights = CommonOptions.Weights(line) ?? Modeling.Weights.WeightFormat.Fp32;
        int threads = CommonOptions.Threads(line);
        CommonOptions.RequireCpuFor(weights, device);
        if ((modelDir is null) == (synthetic is null))
            throw new UsageException("bench needs exactly one of --model <dense-hf-folder> or --synthetic <shape>");
        if (synthetic is not null && (carvedDir is not null || calibrationPath is not null))
            throw new UsageException("--carved and --calibration go with --model, not --synthetic");
        if (carvedDir is not null && layoutText is not null)
            throw new UsageException("--layout carves in memory; with --carved the folder's own layout is used. Give one of them.");

        var clock = Stopwatch.StartNew();
        LlamaForCausalLM dense, carved;
        string source, layout;
        double carveSeconds = 0;
        bool loadedInFormat = false;
        if (synthetic is not null)
        {
            var config = SyntheticModels.Get(synthetic);
            var parsed = MoeLayout.Parse(layoutText ?? "S2A2E16");
            parsed.Validate(config.IntermediateSize);
            Terminal.Info($"bench: building {synthetic} with random weights");
            dense = SyntheticModels.Random(config, seed);
            carved = SyntheticModels.Random(config, seed);
            using (var calibration = RandomCalibration(config, samples, seqLen, seed))
                carveSeconds = CarveInMemory(carved, parsed, calibration, cancel);
            if (device.type != DeviceType.CPU)   // after carving: replacing a module after Module.to() fails in TorchSharp
            {
                dense.to(device);
                carved.to(device);
            }
            (source, layout) = ($"synthetic:{synthetic}", parsed.ToString());
        }
        else
        {
            if (ModelFolder.IsCarved(modelDir!))
                throw new UsageException($"'{modelDir}' is carved; pass the dense folder it came from as --model and the carved one as --carved");
            if (carvedDir is not null)
            {
                if (!ModelFolder.IsCarved(carvedDir)) throw new UsageException($"--carved '{carvedDir}' is not a carved folder (its config.json has no cmoe section)");
                // Nothing to carve: both load straight into the requested format (a 7B model never exists in fp32 here).
                dense = ModelFolder.Load(modelDir!, weights, device);
                carved = ModelFolder.Load(carvedDir, weights, device);
                loadedInFormat = true;
                var shape = ((MoeBlock)carved.Model.Layers[0].Mlp).Shape;
                layout = LayoutName(shape);
            }
            else
            {
                dense = ModelFolder.Load(modelDir!, device: device);
                var parsed = MoeLayout.Parse(layoutText ?? "S2A2E16");
                parsed.Validate(dense.Config.IntermediateSize);
                carved = ModelFolder.Load(modelDir!, device: device);
                using var calibration = calibrationPath is null
                    ? RandomCalibration(dense.Config, samples, seqLen, seed)
                    : TextCalibration(modelDir!, calibrationPath, samples, seqLen, seed);
                carveSeconds = CarveInMemory(carved, parsed, calibration, cancel);
                layout = parsed.ToString();
            }
            source = Path.GetFullPath(modelDir!);
        }
        if (weights.Kind != Modeling.Weights.WeightKind.Fp32 && !loadedInFormat)
        {
            Terminal.Info($"bench: storing both models' weights as {weights}");
            (dense, carved) = (Converted(dense, weights), Converted(carved, weights));
        }
        using var denseScope = dense;
        using var carvedScope = carved;
        var config0 = dense.Config;
        int ffnLayer = ffnLayerOption ?? config0.NumLayers / 2;
        if (ffnLayer >= config0.NumLayers) throw new UsageException($"--ffn-layer must be below {config0.NumLayers}");
        var moeShape = ((MoeBlock)carved.Model.Layers[ffnLayer].Mlp).Shape;
        double ideal = (double)moeShape.IntermediateSize / (moeShape.SharedSize + moeShape.ActiveExperts * (double)moeShape.ExpertSize);

        var settings = new BenchSettings(promptTokens, decodeTokens, batch, repeats, ffnLayer, ffnTokens, seed);
        double imbalance = InferenceBench.LoadImbalance(carved, ffnLayer, batch, promptTokens, seed + 1);
        var (d, c) = InferenceBench.Run(dense, carved, settings, Terminal.Info, cancel);

        var machine = MachineFacts(threads, device);
        double probe = device.type == DeviceType.CPU ? Modeling.Kernels.BandwidthProbe.ReadGBps(threads) : double.NaN;
        machine["read_bandwidth_gb_per_s"] = double.IsNaN(probe) ? null : Math.Round(probe, 2);
        long denseBytes = Modeling.Weights.DecodeTraffic.WeightBytesPerToken(dense), carvedBytes = Modeling.Weights.DecodeTraffic.WeightBytesPerToken(carved);
        double denseGBps = denseBytes * d.DecodeTokensPerSecond / batch / 1e9, carvedGBps = carvedBytes * c.DecodeTokensPerSecond / batch / 1e9;
        var result = new JsonObject
        {
            ["machine"] = machine,
            ["model"] = new JsonObject
            {
                ["source"] = source,
                ["layout"] = layout,
                ["hidden_size"] = config0.HiddenSize,
                ["intermediate_size"] = config0.IntermediateSize,
                ["layers"] = config0.NumLayers,
                ["heads"] = config0.NumHeads,
                ["kv_heads"] = config0.NumKeyValueHeads,
                ["vocab_size"] = config0.VocabSize,
                ["shared_size"] = moeShape.SharedSize,
                ["routed_experts"] = moeShape.RoutedExperts,
                ["expert_size"] = moeShape.ExpertSize,
                ["active_experts"] = moeShape.ActiveExperts,
                ["active_ffn_fraction"] = Math.Round(moeShape.ActiveFraction, 4),
                ["ideal_ffn_speedup"] = Math.Round(ideal, 4),
                ["carve_seconds"] = Math.Round(carveSeconds, 2),
                ["ffn_layer_load_max_over_mean"] = Math.Round(imbalance, 3),
                ["weights"] = weights.ToString(),
                ["dense_weight_bytes_per_token"] = denseBytes,
                ["carved_weight_bytes_per_token"] = carvedBytes,
                ["byte_count_ideal_decode_speedup"] = Math.Round((double)denseBytes / carvedBytes, 3),
                ["router"] = carved.Model.Layers.Any(l => l.Mlp is MoeBlock { RouterThreshold: not null })
                    ? "threshold (dynamic-K: the number of routed experts varies per token, 0 to all; active_experts is the mean calibrated on the carving tokens)"
                    : "top-a (a fixed number of routed experts per token)",
            },
            ["settings"] = new JsonObject
            {
                ["prompt_tokens"] = promptTokens,
                ["decode_tokens"] = decodeTokens,
                ["batch"] = batch,
                ["repeats"] = repeats,
                ["ffn_layer"] = ffnLayer,
                ["ffn_decode_tokens"] = Math.Min(ffnTokens, promptTokens),
                ["seed"] = seed,
                ["statistic"] = "median",
            },
            ["dense"] = SpeedJson(d, denseGBps, probe),
            ["carved"] = SpeedJson(c, carvedGBps, probe),
            ["ratios"] = new JsonObject
            {
                ["prefill_speedup"] = Math.Round(c.PrefillTokensPerSecond / d.PrefillTokensPerSecond, 3),
                ["decode_speedup"] = Math.Round(c.DecodeTokensPerSecond / d.DecodeTokensPerSecond, 3),
                ["ffn_decode_speedup"] = Math.Round(d.FfnDecodeMicrosPerToken / c.FfnDecodeMicrosPerToken, 3),
                ["ffn_prefill_speedup"] = Math.Round(d.FfnPrefillMicrosPerToken / c.FfnPrefillMicrosPerToken, 3),
                ["ideal_ffn_speedup"] = Math.Round(ideal, 3),
                ["ffn_decode_fraction_of_ideal"] = Math.Round(d.FfnDecodeMicrosPerToken / c.FfnDecodeMicrosPerToken / ideal, 3),
                ["ffn_decode_every_expert_vs_dense"] = Math.Round(d.FfnDecodeMicrosPerToken / c.FfnDecodeEveryExpertMicrosPerToken, 3),
            },
            ["seconds"] = Math.Round(clock.Elapsed.TotalSeconds, 1),
        };
        if (json)
        {
            Terminal.WriteJson(result);
            return 0;
        }
        Console.WriteLine($"machine: {machine["processor"]}, {machine["logical_cores"]} logical cores, threads {threads}, {device}, read bandwidth probe {probe:F1} GB/s");
        Console.WriteLine($"model:   {source}, carved {layout} (ideal FFN speed-up e/(s+a) = {ideal:F2}x; layer {ffnLayer} load max/mean {imbalance:F2})");
        Console.WriteLine($"weights: {weights}; weight bytes per decoded token: dense {denseBytes / 1e6:F2} MB, carved {carvedBytes / 1e6:F2} MB (byte-count ideal {(double)denseBytes / carvedBytes:F2}x)");
        Console.WriteLine($"run:     batch {batch}, prompt {promptTokens}, decode {decodeTokens}, medians of {repeats}");
        Console.WriteLine($"{"",-28}{"dense",12}{"carved",12}{"ratio",9}");
        void Row(string what, double dv, double cv, bool higherIsBetter, string format) =>
            Console.WriteLine($"{what,-28}{dv.ToString(format),12}{cv.ToString(format),12}{(higherIsBetter ? cv / dv : dv / cv),8:F2}x");
        Row("prefill tokens/s", d.PrefillTokensPerSecond, c.PrefillTokensPerSecond, true, "F1");
        Row("decode tokens/s", d.DecodeTokensPerSecond, c.DecodeTokensPerSecond, true, "F1");
        Console.WriteLine($"{"decode weight GB/s",-28}{denseGBps,12:F1}{carvedGBps,12:F1}   ({denseGBps / probe:P0} / {carvedGBps / probe:P0} of the probed read bandwidth)");
        Row("FFN decode us/token", d.FfnDecodeMicrosPerToken, c.FfnDecodeMicrosPerToken, false, "F1");
        Row("FFN prefill us/token", d.FfnPrefillMicrosPerToken, c.FfnPrefillMicrosPerToken, false, "F2");
        Row("FFN decode, every expert on", d.FfnDecodeMicrosPerToken, c.FfnDecodeEveryExpertMicrosPerToken, false, "F1");
        Console.WriteLine($"FFN decode speed-up is {d.FfnDecodeMicrosPerToken / c.FfnDecodeMicrosPerToken / ideal:P0} of ideal " +
                          "(every expert on: the dense FFN's work through the carved path; near 1x means the gain is the skipped experts)");
        return 0;
    }

    private static LlamaForCausalLM Converted(LlamaForCausalLM model, Modeling.Weights.WeightFormat weights)
    {
        using (model) return Modeling.Weights.ModelConversion.Convert(model, weights);
    }

    private static JsonObject SpeedJson(ModelSpeed s, double weightGBps, double probe) => new()
    {
        ["decode_weight_gb_per_s"] = Math.Round(weightGBps, 2),
        ["decode_fraction_of_read_bandwidth"] = double.IsNaN(probe) ? null : Math.Round(weightGBps / probe, 3),
        ["prefill_tokens_per_s"] = Math.Round(s.PrefillTokensPerSecond, 2),
        ["decode_tokens_per_s"] = Math.Round(s.DecodeTokensPerSecond, 2),
        ["decode_ms_per_token"] = Math.Round(s.DecodeMillisPerToken, 3),
        ["ffn_decode_us_per_token"] = Math.Round(s.FfnDecodeMicrosPerToken, 2),
        ["ffn_prefill_us_per_token"] = Math.Round(s.FfnPrefillMicrosPerToken, 3),
        ["ffn_decode_every_expert_us_per_token"] = double.IsNaN(s.FfnDecodeEveryExpertMicrosPerToken) ? null : Math.Round(s.FfnDecodeEveryExpertMicrosPerToken, 2),
    };

    /// <summary>Processor name, core count, torch threads, runtime.</summary>
    internal static JsonObject MachineFacts(int threads, Device device)
    {
        string processor = "unknown";
        try
        {
            var name = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
            if (name is not null) processor = name[(name.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return new JsonObject
        {
            ["processor"] = processor,
            ["logical_cores"] = Environment.ProcessorCount,
            ["torch_threads"] = threads,
            ["device"] = device.ToString(),
            ["os"] = System.Runtime.InteropServices.RuntimeInformation.OSDescription,
            ["dotnet"] = Environment.Version.ToString(),
        };
    }

    private static string LayoutName(MoeShape shape)
    {
        int experts = shape.IntermediateSize / shape.ExpertSize;
        return $"S{experts - shape.RoutedExperts}A{shape.ActiveExperts}E{experts}";
    }

    /// <summary>Carves <paramref name="model"/> in place to <paramref name="layout"/> on the calibration ids (also used by tests/CMoE.Peer); seconds taken.</summary>
    internal static double CarveInMemory(LlamaForCausalLM model, MoeLayout layout, Tensor calibration, CancellationToken cancel)
    {
        using var bar = Terminal.Progress($"carve {layout}");
        var report = MoeCarver.Carve(model, calibration, new CarveOptions { Layout = layout },
            new Progress<(int Done, int Total)>(p => bar.Report((double)p.Done / p.Total, $"layer {p.Done}/{p.Total}")), cancel);
        return report.Seconds;
    }

    /// <summary>Random calibration ids [samples, seqLen]: routing, not quality, is what speed depends on.</summary>
    internal static Tensor RandomCalibration(LlamaConfig config, int samples, int seqLen, int seed)
    {
        using var gen = new TorchSharp.torch.Generator((ulong)seed + 1000);
        return randint(0, config.VocabSize, [samples, seqLen], dtype: ScalarType.Int64, generator: gen);
    }

    private static Tensor TextCalibration(string modelDir, string path, int samples, int seqLen, int seed)
    {
        string text = CommonOptions.ReadText(path, "Calibration");
        var tokenizer = TokenizerLoader.FromFolder(modelDir);
        return tensor(CalibrationSampler.Sample(tokenizer.Encode(text, addBos: true), samples, seqLen, seed));
    }
}
