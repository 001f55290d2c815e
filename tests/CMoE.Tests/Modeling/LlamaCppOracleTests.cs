using CMoE.Cli.Bench;
using CMoE.Evaluation;
using CMoE.Modeling;
using CMoE.Modeling.IO;
using CMoE.Peer;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Tests.Modeling;

/// <summary>A theory that needs llama.cpp (LLamaSharp's native library); skipped with the reason where it cannot load.</summary>
public sealed class LlamaCppTheoryAttribute : TheoryAttribute
{
    private static readonly string? Unavailable = Probe();

    /// <summary>Creates the attribute and decides the skip.</summary>
    public LlamaCppTheoryAttribute()
    {
        if (Unavailable is not null) Skip = Unavailable;
    }

    private static string? Probe()
    {
        try
        {
            LlamaCpp.Configure();
            LLama.Native.NativeApi.llama_max_devices();
            return null;
        }
        catch (Exception e) when (e is DllNotFoundException or TypeInitializationException or EntryPointNotFoundException or BadImageFormatException or LLama.Exceptions.RuntimeError)
        {
            return $"llama.cpp (LLamaSharp.Backend.Cpu) cannot load on this machine: {e.GetBaseException().Message}";
        }
    }
}

/// <summary>
/// The numeric oracle per family: the tiny random model of <see cref="SyntheticModels.FamilyShapes"/>, written in its Hugging Face layout
/// and converted to GGUF as llama.cpp's converter does, has our perplexity equal to llama.cpp's within 1e-5 relative over 16 windows of
/// 256 seeded ids (llama.cpp: F32 KV cache, no flash attention). Gemma-2 is compared with llama.cpp's fp16 GELU table emulated
/// (<see cref="GatedActivations.EmulateLlamaCppGelu"/>); the full table with sotu_val text is <c>tests/CMoE.Peer families</c>.
/// </summary>
public class LlamaCppOracleTests
{
    public static TheoryData<string> Shapes => new(SyntheticModels.FamilyShapes);

    [LlamaCppTheory]
    [MemberData(nameof(Shapes))]
    public void PerplexityEqualsLlamaCpp(string shape)
    {
        TorchTestSetup.Pin();
        const int windows = 16, seqLen = 256;
        using var dir = new TempDir();
        var config = SyntheticModels.Get(shape);
        string folder = dir["model"];                       // not named after the family (llama.cpp special-cases names with "phi3")
        SyntheticModels.WriteFolder(config, folder, seed: 21, TestPaths.EmbeddedModel, spread: true);
        string gguf = dir["model.gguf"];
        GgufWriter.Write(folder, gguf, GgufTensorType.F32);
        var g = new Generator(5);
        using var idTensor = randint(3, config.VocabSize, [windows * seqLen], generator: g, dtype: ScalarType.Int64);
        int[] stream = idTensor.data<long>().Select(i => (int)i).ToArray();

        double peerSum = 0;
        using (var peer = LlamaCpp.ForPerplexity(gguf, 1, seqLen))
            for (int w = 0; w < windows; w++) peerSum += peer.WindowNll(stream.Skip(w * seqLen).Take(seqLen).Select(i => (long)i).ToArray());
        double theirs = Math.Exp(peerSum / (windows * (seqLen - 1L)));

        GatedActivations.EmulateLlamaCppGelu = config.Activation == GatedActivation.GeluTanh;
        try
        {
            using var model = ModelFolder.Load(folder);
            double ours = PerplexityEvaluator.Evaluate(model, stream, seqLen, windows).Perplexity;
            (Math.Abs(ours - theirs) / theirs).Should().BeLessThan(1e-5, $"{shape}: ours {ours:F6}, llama.cpp {theirs:F6}");
        }
        finally
        {
            GatedActivations.EmulateLlamaCppGelu = false;
        }
    }
}
