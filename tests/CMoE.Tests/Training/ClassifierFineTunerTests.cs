using CMoE.Modeling.IO;
using CMoE.Training;
using static TorchSharp.torch;

namespace CMoE.Tests.Training;

/// <summary>
/// The classification core on the embedded tinyref model: padding never reaches the pooled state (a row's logits alone equal
/// its logits in a right-padded batch, both poolings), and the split, class weights and early stopping behave.
/// </summary>
public class ClassifierFineTunerTests
{
    private static int[] Ids(int seed, int length)
    {
        var rng = new Random(seed);
        return [1, .. Enumerable.Range(0, length - 1).Select(_ => rng.Next(3, 8000))];
    }

    [Theory]
    [InlineData(ClassifierPooling.LastToken)]
    [InlineData(ClassifierPooling.Mean)]
    public void PaddingDoesNotLeakIntoTheLogits(ClassifierPooling pooling)
    {
        TorchTestSetup.Pin();
        using var model = ModelFolder.Load(TestPaths.EmbeddedModel);
        using var classifier = SequenceClassifier.Create(model, 3, pooling, padId: 2, seed: 4);
        int[][] rows = [Ids(1, 5), Ids(2, 12), Ids(3, 9)];
        var batched = classifier.LogitsOf(rows);
        using var noGrad = no_grad();
        for (int r = 0; r < rows.Length; r++)
        {
            var alone = classifier.LogitsOf([rows[r]])[0];
            for (int c = 0; c < 3; c++) Assert.Equal(alone[c], batched[r][c], 1e-4);
        }
        // A padded batch through the training path (Logits on an explicit batch) agrees too.
        var (ids, lengths) = classifier.Batch(rows);
        var z = classifier.Logits(ids, lengths).data<float>().ToArray();
        for (int r = 0; r < rows.Length; r++)
            for (int c = 0; c < 3; c++) Assert.Equal(batched[r][c], z[r * 3 + c], 1e-4);
    }

    [Fact]
    public void EarlyStoppingKeepsTheBestStateAndReportsIt()
    {
        TorchTestSetup.Pin();
        using var model = ModelFolder.Load(TestPaths.EmbeddedModel);
        // Random labels: validation loss cannot keep improving, so patience 1 stops before 40 steps.
        var rng = new Random(5);
        var rows = Enumerable.Range(0, 24).Select(i => Ids(100 + i, 6)).ToList();
        var labels = rows.Select(_ => rng.Next(2)).ToList();
        var options = new ClassifierOptions
        {
            BatchSize = 4, Epochs = 10, MaxSteps = 40, ValidationFraction = 0.25, ValidationEvery = 2, Patience = 1, LearningRate = 1e-2,
            HeadLearningRate = 5e-2, LoraRank = 2, ClassWeighting = true, Seed = 3,
        };
        using var tuner = new ClassifierFineTuner(model, 2, 2, options);
        var report = tuner.Train(rows, labels);
        using var classifier = tuner.Classifier;
        tuner.Finish();
        Assert.True(report.StoppedEarly, $"ran {report.Steps} steps");
        Assert.True(report.Steps < 40);
        Assert.True(report.BestStep <= report.Steps);
        Assert.False(double.IsNaN(report.BestValidationLoss));
        Assert.Throws<InvalidOperationException>(() => tuner.Train(rows, labels));
        Assert.Contains("0..1", Assert.Throws<ArgumentException>(() =>
        {
            using var other = new ClassifierFineTuner(model, 2, 2, options with { Patience = 0 });
            other.Train(rows, labels.Select(l => l + 1).ToList());
        }).Message);
    }

    [Fact]
    public void SplitIsSeededAndDisjoint()
    {
        var (train, validation) = ClassifierFineTuner.Split(100, 0.1, 7);
        Assert.Equal(10, validation.Length);
        Assert.Equal(90, train.Length);
        Assert.Empty(train.Intersect(validation));
        Assert.Equal(validation, ClassifierFineTuner.Split(100, 0.1, 7).Validation);
        Assert.Empty(ClassifierFineTuner.Split(100, 0, 7).Validation);
    }
}
