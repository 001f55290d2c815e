using System.Diagnostics;
using System.IO.Compression;
using System.Reflection;
using System.Text.Json;
using CMoE.MLNet;
using CMoE.MLNet.Persistence;
using Microsoft.ML;
using Microsoft.ML.Data;
using Xunit.Abstractions;

namespace CMoE.Tests.Persistence;

/// <summary>Model-zip persistence of CMoE transformers through <see cref="MlNetBridge"/>.</summary>
public sealed class PersistenceTests : IDisposable
{
    private const int Dim = WeightedSumTransformer.SampleDimension;
    private readonly ITestOutputHelper _output;
    private readonly string _dir = Directory.CreateTempSubdirectory("cmoe-persistence-").FullName;

    public PersistenceTests(ITestOutputHelper output) => _output = output;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static float[][] Rows(int count, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count)
            .Select(_ => Enumerable.Range(0, Dim).Select(_ => (float)(random.NextDouble() * 4 - 2)).ToArray())
            .ToArray();
    }

    private static IDataView Data(MLContext ml, float[][] rows) =>
        ml.Data.LoadFromEnumerable(rows.Select(r => new WeightedSumInput { Features = r }));

    private static float[] Scores(ITransformer model, IDataView data) =>
        model.Transform(data).GetColumn<float>("Score").ToArray();

    private static WeightedSumTransformer Sample(MLContext ml, int weightCount = 10 << 20 >> 2, int batchSize = 1) =>
        new(ml, WeightedSumTransformer.RandomWeights(weightCount, seed: 42), Dim, batchSize: batchSize);

    private string Save(MLContext ml, ITransformer model, float[][] rows, string name = "model.zip")
    {
        string path = Path.Combine(_dir, name);
        ml.Model.Save(model, Data(ml, rows).Schema, path);
        return path;
    }

    [Fact]
    public void SaveThenLoadInNewMLContextGivesIdenticalOutputs()
    {
        var rows = Rows(20, seed: 1);
        var ml = new MLContext(seed: 0);
        var model = Sample(ml);
        var expected = Scores(model, Data(ml, rows));
        string path = Save(ml, model, rows);

        var ml2 = new MLContext(seed: 0);
        MlNetBridge.RegisterLoader<WeightedSumTransformer>(ml2);
        var loaded = ml2.Model.Load(path, out var schema);

        loaded.Should().BeOfType<WeightedSumTransformer>().Which.Weights.Should().Equal(model.Weights);
        schema.GetColumnOrNull("Features")!.Value.Type.Should().Be(new VectorDataViewType(NumberDataViewType.Single, Dim));
        Scores(loaded, Data(ml2, rows)).Should().Equal(expected);
    }

    [Fact]
    public void PayloadEntriesAreTheirOwnZipEntries()
    {
        var ml = new MLContext(seed: 0);
        var model = Sample(ml, weightCount: 1000);
        string path = Save(ml, model, Rows(1, 1));

        using var zip = ZipFile.OpenRead(path);
        zip.Entries.Select(e => e.FullName.Replace('\\', '/')).Should().Contain(["TransformerChain/Model.key", "TransformerChain/weights.f32"]);
        zip.Entries.Single(e => e.Name == "weights.f32").Length.Should().Be(1000 * sizeof(float));
    }

    [Fact]
    public void ChainWithBatchedCursorRoundTripsAndMatchesRowByRow()
    {
        var rows = Rows(23, seed: 2);
        var ml = new MLContext(seed: 0);
        var data = Data(ml, rows);
        var copy = ml.Transforms.CopyColumns("Original", "Features").Fit(data);
        var batched = Sample(ml, weightCount: 4096, batchSize: 5);
        var chain = new TransformerChain<ITransformer>(copy, batched);
        var rowByRow = Scores(Sample(ml, weightCount: 4096), data);

        var transformed = chain.Transform(data);
        transformed.GetColumn<float>("Score").ToArray().Should().Equal(rowByRow);
        // Pass-through columns still come from the current row although the batch reads ahead.
        transformed.GetColumn<float[]>("Original").Should().BeEquivalentTo(rows, o => o.WithStrictOrdering());
        batched.MapBatchCalls.Should().Be(5); // ceil(23 / 5)

        string path = Save(ml, chain, rows);
        var ml2 = new MLContext(seed: 0);
        MlNetBridge.RegisterLoader<WeightedSumTransformer>(ml2);
        var loaded = ml2.Model.Load(path, out _);
        ((IEnumerable<ITransformer>)loaded).Last().Should().BeOfType<WeightedSumTransformer>().Which.Batch.Should().Be(5);
        Scores(loaded, Data(ml2, rows)).Should().Equal(rowByRow);
    }

    [Fact]
    public void PredictionEngineWorksBeforeAndAfterReload()
    {
        var rows = Rows(5, seed: 3);
        var ml = new MLContext(seed: 0);
        var model = Sample(ml, weightCount: 10_000);
        var expected = Scores(model, Data(ml, rows));

        var engine = ml.Model.CreatePredictionEngine<WeightedSumInput, WeightedSumOutput>(model);
        rows.Select(r => engine.Predict(new WeightedSumInput { Features = r }).Score).Should().Equal(expected);

        string path = Save(ml, model, rows);
        var ml2 = new MLContext(seed: 0).RegisterCMoE();
        MlNetBridge.RegisterLoader<WeightedSumTransformer>(ml2);
        var loaded = ml2.LoadCMoEModel(path, out _);
        var engine2 = ml2.Model.CreatePredictionEngine<WeightedSumInput, WeightedSumOutput>(loaded);
        rows.Select(r => engine2.Predict(new WeightedSumInput { Features = r }).Score).Should().Equal(expected);
    }

    [Fact]
    public void SaveThenLoadInNewProcessGivesIdenticalOutputs()
    {
        var rows = Rows(12, seed: 4);
        var ml = new MLContext(seed: 0);
        var model = Sample(ml);
        var expected = Scores(model, Data(ml, rows));
        string path = Save(ml, model, rows);

        var (exit, stdout, stderr) = RunProbe(path, rows);

        exit.Should().Be(0, stderr);
        using var json = JsonDocument.Parse(stdout);
        json.RootElement.GetProperty("transform").Deserialize<float[]>().Should().Equal(expected);
        json.RootElement.GetProperty("predict").Deserialize<float[]>().Should().Equal(expected);
        json.RootElement.GetProperty("inputSchema").Deserialize<string[]>().Should().Equal($"Features:Vector<Single, {Dim}>");
    }

    [Fact]
    public void NewProcessWithoutRegistrationCannotLoad()
    {
        // Documents why RegisterCMoE exists: ML.NET looks loaders up per MLContext.
        var rows = Rows(1, seed: 5);
        var ml = new MLContext(seed: 0);
        string path = Save(ml, Sample(ml, weightCount: 100), rows);

        var (exit, _, stderr) = RunProbe(path, rows, "--no-register");

        exit.Should().Be(1);
        stderr.Should().Contain("Couldn't load model");
    }

    [Fact]
    public void MissingInputColumnNamesColumnAndExpectedType()
    {
        var ml = new MLContext(seed: 0);
        var model = Sample(ml, weightCount: 100);
        var data = ml.Data.LoadFromEnumerable(new[] { new { Other = 1f } });

        var act = () => model.Transform(data);
        act.Should().Throw<ArgumentOutOfRangeException>()
            .WithMessage("*input column 'Features' not found*Vector<Single, 8>*Other (Single)*");
        var engine = () => ml.Model.CreatePredictionEngine<OtherRow, WeightedSumOutput>(model);
        engine.Should().Throw<Exception>().Where(e => Flatten(e).Contains("'Features' not found"));
    }

    [Fact]
    public void WrongTypedInputColumnNamesColumnAndExpectedType()
    {
        var ml = new MLContext(seed: 0);
        var model = Sample(ml, weightCount: 100);
        var data = ml.Data.LoadFromEnumerable(new[] { new DoubleRow() });

        var act = () => model.GetOutputSchema(data.Schema);
        act.Should().Throw<ArgumentOutOfRangeException>()
            .WithMessage("*input column 'Features' has type Vector<Double, 8>, expected Vector<Single, 8>*");
    }

    [Fact]
    public void FutureFormatVersionFailsWithClearMessage()
    {
        var rows = Rows(1, seed: 6);
        var ml = new MLContext(seed: 0);
        var future = new WeightedSumTransformer(ml, [1, 2, 3], Dim) { SaveFormat = WeightedSumTransformer.Format with { Version = 2 } };
        string path = Save(ml, future, rows);

        var ml2 = new MLContext(seed: 0);
        MlNetBridge.RegisterLoader<WeightedSumTransformer>(ml2);
        var raw = () => ml2.Model.Load(path, out _);
        raw.Should().Throw<Exception>().Where(e => Flatten(e).Contains("format version 2 was written by a newer CMoE.MLNet"));

        var viaCatalog = () => ml2.LoadCMoEModel(path, out _);
        viaCatalog.Should().Throw<CMoEFormatException>()
            .WithMessage("*'CMoETestWeightedSum' format version 2 was written by a newer CMoE.MLNet; this build reads versions 1-1. Upgrade*");
    }

    [Fact]
    public void FileThatIsNotAZipFailsWithClearMessage()
    {
        string path = Path.Combine(_dir, "notes.zip");
        File.WriteAllText(path, "not a zip");

        var act = () => new MLContext().LoadCMoEModel(path, out _);
        act.Should().Throw<CMoEFormatException>().WithMessage($"'{path}' is not a model zip*mlContext.Model.Save*");
    }

    [Fact]
    public void ZipThatIsNotAnMlNetModelFailsWithClearMessage()
    {
        string path = Path.Combine(_dir, "other.zip");
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Create))
            using (var w = new StreamWriter(zip.CreateEntry("readme.txt").Open())) w.Write("hello");

        var act = () => new MLContext().LoadCMoEModel(path, out _);
        act.Should().Throw<CMoEFormatException>().WithMessage($"'{path}' is a zip but not an ML.NET model zip*");
    }

    [Fact]
    public void MlNetModelWithoutCMoETransformerFailsWithClearMessage()
    {
        var ml = new MLContext(seed: 0);
        var data = Data(ml, Rows(2, 7));
        string path = Path.Combine(_dir, "plain.zip");
        ml.Model.Save(ml.Transforms.CopyColumns("Copy", "Features").Fit(data), data.Schema, path);

        var act = () => new MLContext().LoadCMoEModel(path, out _);
        act.Should().Throw<CMoEFormatException>().WithMessage("*holds no CMoE transformer*");
    }

    [Fact]
    public void SaveAndLoadOf50MBBlobIsTimed()
    {
        var rows = Rows(4, seed: 8);
        var ml = new MLContext(seed: 0);
        var model = Sample(ml, weightCount: 50 << 20 >> 2);
        var expected = Scores(model, Data(ml, rows));

        var watch = Stopwatch.StartNew();
        string path = Save(ml, model, rows);
        var saveSeconds = watch.Elapsed.TotalSeconds;
        var ml2 = new MLContext(seed: 0);
        MlNetBridge.RegisterLoader<WeightedSumTransformer>(ml2);
        watch.Restart();
        var loaded = ml2.Model.Load(path, out _);
        var loadSeconds = watch.Elapsed.TotalSeconds;

        _output.WriteLine($"50 MB blob: save {saveSeconds:F2} s, load {loadSeconds:F2} s, zip {new FileInfo(path).Length / 1e6:F1} MB");
        Scores(loaded, Data(ml2, rows)).Should().Equal(expected);
    }

    private static string Flatten(Exception e)
    {
        var messages = new List<string>();
        for (var x = e; x is not null; x = x.InnerException) messages.Add(x.Message);
        return string.Join(" | ", messages);
    }

    private (int Exit, string Stdout, string Stderr) RunProbe(string zip, float[][] rows, params string[] extra)
    {
        string probe = typeof(PersistenceTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .Single(a => a.Key == "ZipProbePath").Value!;
        File.Exists(probe).Should().BeTrue($"the probe is built with the test project (expected at {probe})");
        string rowsPath = Path.Combine(_dir, "rows.json");
        File.WriteAllText(rowsPath, JsonSerializer.Serialize(rows));

        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (string arg in new[] { "exec", probe, zip, rowsPath }.Concat(extra)) start.ArgumentList.Add(arg);
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit(120_000).Should().BeTrue("the probe finishes within 2 minutes");
        _output.WriteLine(stdout);
        return (process.ExitCode, stdout, stderr.Result);
    }

    public sealed class OtherRow
    {
        public float Other { get; set; }
    }

    public sealed class DoubleRow
    {
        [VectorType(Dim)]
        public double[] Features { get; set; } = new double[Dim];
    }
}
