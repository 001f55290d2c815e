using CMoE.Carving;
using CMoE.Modeling;
using CMoE.Modeling.IO;
using CMoE.Modeling.Tokenization;
using static TorchSharp.torch;

namespace CMoE.Tests.Training;

/// <summary>
/// The embedded tinyref carved once to S2A2E16 with the authors' procedure (4 x 128 calibration tokens from the start of sotu_train) and saved
/// to a temporary folder; each test loads its own copy. Also holds token windows of that text.
/// </summary>
public sealed class CarvedTinyrefFixture : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), $"cmoe-ft-tests-{Guid.NewGuid():N}");
    private readonly Lazy<int[]> _stream;

    public CarvedTinyrefFixture()
    {
        _stream = new Lazy<int[]>(() =>
        {
            using var reader = new StreamReader(TestPaths.InShared("data", "eval", "sotu_train.txt"));
            var buffer = new char[400_000];
            int read = reader.ReadBlock(buffer, 0, buffer.Length);
            return TokenizerLoader.FromFolder(TestPaths.EmbeddedModel).Encode(new string(buffer, 0, read), addBos: true).ToArray();
        });
        _carved = new Lazy<string>(() =>
        {
            TorchTestSetup.Pin();
            using var model = ModelFolder.Load(TestPaths.EmbeddedModel);
            using var calibration = tensor(CalibrationSampler.Sample(_stream.Value, 4, 128, seed: 0));
            // Pinned to the authors' carving: these tests check the fine-tuner (its thresholds, e.g. the load balance after 16
            // steps, were set on this carving), not the carving recipe, whose defaults may change.
            MoeCarver.Carve(model, calibration, CarveOptions.Authors(MoeLayout.Parse("S2A2E16")));
            CarvedFolder.Save(model, TestPaths.EmbeddedModel, _folder, "S2A2E16");
            return _folder;
        });
    }

    private readonly Lazy<string> _carved;

    /// <summary>A fresh copy of the carved model.</summary>
    public LlamaForCausalLM Load(ScalarType dtype = ScalarType.Float32) => ModelFolder.Load(_carved.Value, dtype);

    /// <summary><paramref name="samples"/> random windows of <paramref name="seqLen"/> tokens [samples, seqLen].</summary>
    public Tensor Windows(int samples, int seqLen, int seed) => tensor(CalibrationSampler.Sample(_stream.Value, samples, seqLen, seed));

    public void Dispose()
    {
        if (Directory.Exists(_folder)) Directory.Delete(_folder, recursive: true);
    }
}
