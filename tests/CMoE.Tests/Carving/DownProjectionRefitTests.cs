using CMoE.Carving;
using CMoE.Evaluation;
using CMoE.Modeling;
using CMoE.Modeling.IO;
using CMoE.Modeling.MoE;
using CMoE.Modeling.Tokenization;
using static TorchSharp.torch;

namespace CMoE.Tests.Carving;

/// <summary>The closed-form down-projection refit (<see cref="DownProjectionRefit"/>) and the recipe defaults of issue #16.</summary>
public class DownProjectionRefitTests
{
    private static Tensor RandomIds(int samples, int length, int seed)
    {
        var g = new Generator((ulong)seed);
        return randint(3, 8192, [samples, length], generator: g, dtype: ScalarType.Int64);
    }

    /// <summary>Layer 0's FFN inputs of <paramref name="ids"/> [q, d] on the dense model (the calibration inputs of the first carved layer).</summary>
    private static Tensor FirstFfnInputs(LlamaForCausalLM model, Tensor ids)
    {
        var (cos, sin) = model.Rotary(0, ids.shape[1]);
        using var c = cos;
        using var s = sin;
        using var x = model.Model.Embeddings.forward(ids);
        var layer = model.Model.Layers[0];
        using var mid = layer.AttentionResidual(x, c, s, null, 0);
        using var f = layer.FfnInput(mid);
        return f.reshape(-1, model.Config.HiddenSize).clone();
    }

    private static double RelativeError(Tensor y, Tensor reference)
    {
        using var r = y - reference;
        return (r * r).sum().item<float>() / (double)(reference * reference).sum().item<float>();
    }

    [Fact]
    public void RefitLowersTheCalibrationErrorAndAHugeRidgeKeepsTheDenseColumns()
    {
        TorchTestSetup.Pin();
        using var noGrad = no_grad();
        using var model = ModelFolder.Load(TestPaths.EmbeddedModel);
        using var ids = RandomIds(2, 64, seed: 4);
        using var inputs = FirstFfnInputs(model, ids);                              // [128, d]
        var dense = (SwiGluMlp)model.Model.Layers[0].Mlp;
        using var denseOut = dense.forward(inputs);
        var layout = MoeLayout.Parse("S2A2E16");
        using var markers = ActivationMarkers.Markers(inputs, dense.Gate.Weight, dense.Up.Weight, 10, ActivationScore.Cosine, dense.Activation, null);
        var partition = ExpertPartitioner.Partition(markers, layout, 1);

        using var fitted = MoeBlock.FromDense(dense, partition.Shared, partition.Routed, partition.Representatives, layout.Active);
        using var kept = MoeBlock.FromDense(dense, partition.Shared, partition.Routed, partition.Representatives, layout.Active);
        fitted.eval();
        kept.eval();
        using var authorsOut = kept.forward(inputs);
        double authorsError = RelativeError(authorsOut, denseOut);

        var (before, after) = DownProjectionRefit.Refit(fitted, inputs, denseOut, ridge: 0.3);
        before.Should().BeApproximately(authorsError, 1e-4, "'before' is the carved block's own error on the calibration tokens");
        after.Should().BeLessThan(before * 0.8, "the least-squares fit must remove a real part of what carving dropped");
        using var fittedOut = fitted.forward(inputs);
        double measured = RelativeError(fittedOut, denseOut);
        measured.Should().BeApproximately(after, 1e-4, "the block's forward uses the refitted columns");
        (fitted.Experts.Gate - kept.Experts.Gate).abs().max().item<float>().Should().Be(0, "only W_down changes");

        using var stiff = MoeBlock.FromDense(dense, partition.Shared, partition.Routed, partition.Representatives, layout.Active);
        DownProjectionRefit.Refit(stiff, inputs, denseOut, ridge: 1e9);
        (stiff.Experts.Down - kept.Experts.Down).abs().max().item<float>().Should().BeLessThan(1e-4f, "ridge -> infinity gives the authors' block back");
    }

    [Fact]
    public void RefitRejectsANonPositiveRidge()
    {
        var act = () => new CarveOptions { Layout = MoeLayout.Parse("S2A2E16"), DownFitRidge = 0 }.Validate(1024);
        act.Should().Throw<ArgumentException>().WithMessage("*down-fit ridge*positive*");
    }

    [Fact]
    public void AuthorsRecipeIsTheAuthorsProcedureAndTheDefaultsAreNot()
    {
        var layout = MoeLayout.Parse("S3A3E8");
        var authors = CarveOptions.Authors(layout);
        (authors.Score, authors.KAct, authors.RouterVectors, authors.NeuronWeighting, authors.DownFit, authors.Routing, authors.Iterations)
            .Should().Be((ActivationScore.Cosine, 10, RouterVectors.Representative, NeuronWeighting.None, DownProjectionFit.None, RouterSelection.TopK, 1));
        authors.IsAuthors.Should().BeTrue();
        new CarveOptions { Layout = layout }.IsAuthors.Should().BeFalse();
    }

    [SharedFact]
    public void DefaultRecipeBeatsTheAuthorsOnHeldOutTextAtTheSameActiveCost()
    {
        // A small, real version of the docs' "Carving quality" comparison: calibrate both on sotu_train, evaluate on sotu_val.
        TorchTestSetup.Pin();
        var tokenizer = TokenizerLoader.FromFolder(TestPaths.EmbeddedModel);
        var train = tokenizer.Encode(File.ReadAllText(TestPaths.InShared("data", "eval", "sotu_train.txt")), addBos: true);
        var val = tokenizer.Encode(File.ReadAllText(TestPaths.InShared("data", "eval", "sotu_val.txt")), addBos: true);
        using var calibration = tensor(CalibrationSampler.Sample(train, 4, 256, 0));
        var layout = MoeLayout.Parse("S2A2E16");
        double Ppl(CarveOptions options)
        {
            using var model = ModelFolder.Load(TestPaths.EmbeddedModel);
            MoeCarver.Carve(model, calibration, options);
            ActiveFraction.Reset(model);
            double ppl = PerplexityEvaluator.Evaluate(model, val, 256, 16).Perplexity;
            ActiveFraction.Measured(model).Mean.Should().BeApproximately(layout.ActiveFraction, 1e-9);
            return ppl;
        }
        double authors = Ppl(CarveOptions.Authors(layout));
        double ours = Ppl(new CarveOptions { Layout = layout });
        ours.Should().BeLessThan(0.9 * authors, $"the default recipe ({ours:F1}) must beat the authors' procedure ({authors:F1}) by 10% at the same active fraction");
    }
}
