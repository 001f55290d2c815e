using CMoE.Modeling;
using CMoE.Modeling.MoE;
using CMoE.Training;
using static TorchSharp.torch;

namespace CMoE.Tests.Training;

public class MoEFineTunerTests(CarvedTinyrefFixture tinyref) : IClassFixture<CarvedTinyrefFixture>
{
    private static double EvalLoss(LlamaForCausalLM model, Tensor ids)
    {
        using var noGrad = no_grad();
        using var loss = MoEFineTuner.CausalLmLoss(model, ids);
        return loss.item<float>();
    }

    /// <summary>Coefficient of variation of the tokens per routed expert, averaged over layers, on <paramref name="ids"/>.</summary>
    private static double LoadCv(LlamaForCausalLM model, Tensor ids)
    {
        var blocks = model.Model.Layers.Select(l => (MoeBlock)l.Mlp).ToList();
        foreach (var b in blocks) b.RecordLoad = true;
        using (no_grad()) model.Forward(ids).Dispose();
        double cv = blocks.Average(b =>
        {
            var c = b.LastExpertCounts!.to(ScalarType.Float64).data<double>().ToArray();
            double mean = c.Average();
            return Math.Sqrt(c.Average(x => (x - mean) * (x - mean))) / mean;
        });
        foreach (var b in blocks) b.RecordLoad = false;
        return cv;
    }

    [SharedFact]
    public void LoraLowersLossTrainsRouterScaleAndBalancesLoad()
    {
        TorchTestSetup.Pin();
        using var model = tinyref.Load();
        using var train = tinyref.Windows(32, 128, seed: 1);
        using var held = tinyref.Windows(4, 128, seed: 2);
        double lossBefore = EvalLoss(model, held), cvBefore = LoadCv(model, held);
        var options = new FineTuneOptions { LearningRate = 1e-3, RouterLearningRate = 1e-2, BiasSpeed = 1e-2, LoraDropout = 0, Seed = 3 };
        using var tuner = new MoEFineTuner(model, options);
        var report = tuner.Train(train);
        tuner.Finish();
        double lossAfter = EvalLoss(model, held), cvAfter = LoadCv(model, held);

        report.Steps.Should().Be(16);
        lossAfter.Should().BeLessThan(lossBefore - 0.05, "LoRA training must lower the held-out causal-LM loss");
        report.RouterScaleGradNorm.Should().BeGreaterThan(0, "the router scale u must receive gradients");
        var block0 = (MoeBlock)model.Model.Layers[0].Mlp;
        block0.Router.Scale.abs().max().item<float>().Should().BeGreaterThan(0, "u must have moved");
        block0.Router.Bias.abs().max().item<float>().Should().BeGreaterThan(0, "b must have moved");
        cvAfter.Should().BeLessThan(cvBefore, "the balancing bias must even out the expert load");
    }

    [SharedFact]
    public void Bf16BaseWeightsTrainAndMergeIntoTheFp32Model()
    {
        TorchTestSetup.Pin();
        using var half = tinyref.Load(ScalarType.BFloat16);
        using var full = tinyref.Load();
        using var train = tinyref.Windows(16, 96, seed: 6);
        using var held = tinyref.Windows(4, 96, seed: 7);
        double before = EvalLoss(full, held);
        var options = new FineTuneOptions { LearningRate = 2e-3, LoraDropout = 0, Seed = 8 };
        using var tuner = new MoEFineTuner(half, options);
        tuner.Train(train);
        tuner.Finish(keepAdapters: true);                       // fp32 adapters over bf16 weights
        using var fullTuner = new MoEFineTuner(full, options);
        tuner.CopyTrainedStateTo(fullTuner);
        fullTuner.Finish();                                     // merged into the fp32 weights

        full.Model.Layers[0].Attention.Projections[0].Weight.dtype.Should().Be(ScalarType.Float32);
        double after = EvalLoss(full, held);
        after.Should().BeLessThan(before - 0.05, "adapters trained against bf16 weights must lower the fp32 model's loss");
        EvalLoss(half, held).Should().BeApproximately(after, 0.02, "the fp32 merge computes what the bf16 model with adapters computes, up to bf16 rounding");
        ((MoeBlock)full.Model.Layers[0].Mlp).Router.Bias.abs().max().item<float>().Should().BeGreaterThan(0, "b is carried over");
    }

    [SharedFact]
    public void MergedLoraGivesTheSameLogitsAsTheAdapters()
    {
        TorchTestSetup.Pin();
        using var model = tinyref.Load();
        using var ids = tinyref.Windows(2, 32, seed: 4);
        using var tuner = new MoEFineTuner(model, new FineTuneOptions { Seed = 5 });
        using (no_grad())
            foreach (var (name, t) in tuner.AdapterState().Where(kv => kv.Key.EndsWith("lora_B", StringComparison.Ordinal)))
                t.copy_(randn_like(t).mul(Scalars.Of(0.02)));                 // B starts at 0; make the adapters matter
        model.eval();
        using var plain = Forward(model, ids);
        using var baseline = NoAdapterForward(model, ids, tuner);
        (plain - baseline).abs().max().item<float>().Should().BeGreaterThan(1e-2f, "the adapters must change the logits");
        tuner.Finish();                                         // merges
        using var merged = Forward(model, ids);
        (merged - plain).abs().max().item<float>().Should().BeLessThan(1e-4f);
    }

    [SharedFact]
    public void FineTunedModelSavedAsACarvedFolderReloadsWithIdenticalLogits()
    {
        TorchTestSetup.Pin();
        using var model = tinyref.Load();
        using var train = tinyref.Windows(4, 32, seed: 13);
        using var ids = tinyref.Windows(1, 24, seed: 14);
        using (var tuner = new MoEFineTuner(model, new FineTuneOptions { LearningRate = 1e-3, Seed = 15 }))
        {
            tuner.Train(train);
            tuner.Finish();
        }
        string folder = Path.Combine(Path.GetTempPath(), $"cmoe-ft-saved-{Guid.NewGuid():N}");
        try
        {
            CMoE.Modeling.IO.CarvedFolder.Save(model, TestPaths.EmbeddedModel, folder, "S2A2E16");
            using var reloaded = CMoE.Modeling.IO.ModelFolder.Load(folder);
            using var expected = Forward(model, ids);
            using var actual = Forward(reloaded, ids);
            (actual - expected).abs().max().item<float>().Should().Be(0f);
        }
        finally
        {
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        }
    }

    [SharedFact]
    public void SavedAdaptersReloadIntoAFreshModel()
    {
        TorchTestSetup.Pin();
        using var ids = tinyref.Windows(1, 16, seed: 10);
        string path = Path.Combine(Path.GetTempPath(), $"cmoe-adapters-{Guid.NewGuid():N}.safetensors");
        try
        {
            Tensor expected;
            using (var model = tinyref.Load())
            using (var tuner = new MoEFineTuner(model, new FineTuneOptions { Seed = 11 }))
            {
                using (no_grad())
                    foreach (var (_, t) in tuner.AdapterState()) t.copy_(randn_like(t).mul(Scalars.Of(0.02)));
                model.eval();
                expected = Forward(model, ids);
                CMoE.Modeling.IO.SafeTensorsWriter.Write(path, tuner.AdapterState());
            }
            using (expected)
            using (var model = tinyref.Load())
            using (var tuner = new MoEFineTuner(model, new FineTuneOptions { Seed = 12 }))
            {
                tuner.LoadAdapters(path);
                tuner.Finish();
                using var actual = Forward(model, ids);
                (actual - expected).abs().max().item<float>().Should().BeLessThan(1e-4f);
            }
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static Tensor Forward(LlamaForCausalLM model, Tensor ids)
    {
        using var noGrad = no_grad();
        return model.Forward(ids);
    }

    private static Tensor NoAdapterForward(LlamaForCausalLM model, Tensor ids, MoEFineTuner tuner)
    {
        using var noGrad = no_grad();
        var saved = tuner.AdapterState().Where(kv => kv.Key.EndsWith("lora_B", StringComparison.Ordinal)).Select(kv => (kv.Value, kv.Value.clone())).ToList();
        foreach (var (t, _) in saved) t.zero_();
        var logits = model.Forward(ids);
        foreach (var (t, copy) in saved) { t.copy_(copy); copy.Dispose(); }
        return logits;
    }

    [SharedFact]
    public void ARunIsUnchangedByOtherThreadsDrawingFromTheGlobalGenerator()
    {
        // CI once failed when another test class drew from libtorch's global generator between the fine-tuner's seeding
        // and its dropout draws; the fine-tuner now has its own generator.
        TorchTestSetup.Pin();
        using var train = tinyref.Windows(6, 32, seed: 11);
        var options = new FineTuneOptions { LearningRate = 1e-3, LoraDropout = 0.2, BatchSize = 2, Seed = 12 };
        FineTuneReport Run()
        {
            using var model = tinyref.Load();
            using var tuner = new MoEFineTuner(model, options);
            return tuner.Train(train);
        }
        var quiet = Run();
        using var stop = new CancellationTokenSource();
        var noise = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                manual_seed(99);
                using var r = rand(64);
            }
        });
        FineTuneReport busy;
        try { busy = Run(); }
        finally { stop.Cancel(); noise.Wait(); }
        busy.Losses.Should().Equal(quiet.Losses);
    }

    [SharedFact]
    public void ResumedRunContinuesWhereTheCheckpointStopped()
    {
        TorchTestSetup.Pin();
        using var train = tinyref.Windows(8, 32, seed: 6);
        var options = new FineTuneOptions { LearningRate = 1e-3, Seed = 7 };
        string checkpoint = Path.Combine(Path.GetTempPath(), $"cmoe-ft-ckpt-{Guid.NewGuid():N}");
        try
        {
            FineTuneReport full;
            using (var model = tinyref.Load())
            using (var tuner = new MoEFineTuner(model, options))
                full = tuner.Train(train);

            using (var model = tinyref.Load())
            using (var tuner = new MoEFineTuner(model, options))
            using (var cancel = new CancellationTokenSource())
            {
                var stopAfterTwo = new SyncProgress(p => { if (p.Step == 2) cancel.Cancel(); });
                var act = () => tuner.Train(train, stopAfterTwo, cancel.Token, checkpoint);
                act.Should().Throw<OperationCanceledException>();
            }
            File.Exists(Path.Combine(checkpoint, "state.safetensors")).Should().BeTrue();

            using (var model = tinyref.Load())
            using (var tuner = new MoEFineTuner(model, options))
            {
                tuner.LoadCheckpoint(checkpoint);
                tuner.CompletedSteps.Should().Be(2);
                var resumed = tuner.Train(train);
                resumed.Steps.Should().Be(4);
                resumed.StepsThisRun.Should().Be(2);
                // Same weights, window and dropout mask at step 3: the same loss as the uninterrupted run.
                resumed.Losses[0].Should().BeApproximately(full.Losses[2], 1e-4);
            }
        }
        finally
        {
            if (Directory.Exists(checkpoint)) Directory.Delete(checkpoint, recursive: true);
        }
    }

    [SharedFact]
    public void FullModeLowersLoss()
    {
        TorchTestSetup.Pin();
        using var model = tinyref.Load();
        using var train = tinyref.Windows(8, 64, seed: 8);
        double before = EvalLoss(model, train);
        using var tuner = new MoEFineTuner(model, new FineTuneOptions { Mode = FineTuneMode.Full, LearningRate = 1e-4, LinearDecay = false, Seed = 9 });
        var report = tuner.Train(train);
        tuner.Finish();
        report.RouterScaleGradNorm.Should().BeGreaterThan(0);
        tuner.TrainableParameters.Should().BeGreaterThan(1_000_000);
        EvalLoss(model, train).Should().BeLessThan(before);
    }

    private sealed class SyncProgress(Action<FineTuneProgress> report) : IProgress<FineTuneProgress>
    {
        public void Report(FineTuneProgress value) => report(value);
    }
}
