using CMoE.Carving;
using CMoE.MLNet.Scoring;
using Microsoft.ML;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace CMoE.MLNet;

/// <summary>
/// The whole CMoE conversion in one estimator, created by <c>mlContext.Transforms.CarveMoE(...)</c>: loads the dense
/// model, samples calibration windows from the input's text column, carves every FFN sequentially (the paper's
/// procedure, as <see cref="MoECarverEstimator"/> in sequential mode), optionally balances the router bias
/// (<see cref="RouterFitEstimator"/>) and fine-tunes (<see cref="MoEFineTuner"/>), and returns one
/// <see cref="LanguageModelTransformer"/> holding the carved model, which scores rows and saves into the model zip.
/// </summary>
/// <remarks>
/// The one-pass path (profile once, carve any layout from it) is available by chaining the separate estimators:
/// <c>ProfileActivations(...).Append(CarveExperts(...)).Append(FitRouter(...))</c>.
/// </remarks>
public sealed class CarveMoEEstimator : LanguageModelEstimatorBase<LanguageModelTransformer>
{
    private readonly Options _options;
    private readonly MoeLayout _layout;

    /// <summary>Options of <see cref="CarveMoEEstimator"/>.</summary>
    public sealed class Options : CalibrationOptions
    {
        /// <summary>The dense Hugging Face LLaMA model folder (required).</summary>
        public string ModelFolder { get; set; } = "";

        /// <summary>The MoE layout S{shared}A{active}E{experts}. Default "S2A2E16".</summary>
        public string Layout { get; set; } = "S2A2E16";

        /// <summary>Balanced k-means rounds (1 = the authors' code). Default 1.</summary>
        public int Iterations { get; set; } = 1;

        /// <summary>K_a, markers per token. Default 40 (the authors': 10).</summary>
        public int KAct { get; set; } = CarveOptions.DefaultKAct;

        /// <summary>The activation score. Default raw (the authors': cosine).</summary>
        public ActivationScore Score { get; set; } = ActivationScore.Raw;

        /// <summary>Calibration windows per forward pass. Default 8.</summary>
        public int ForwardBatch { get; set; } = 8;

        /// <summary>Router selection, the authors' top-a (default) or a calibrated threshold (dynamic-K, a variable count per token with mean a on the calibration tokens).</summary>
        public RouterSelection Routing { get; set; } = RouterSelection.TopK;

        /// <summary>Router vectors, the mean of the expert's rows (default) or the representative neuron's rows (authors).</summary>
        public RouterVectors RouterVectors { get; set; } = RouterVectors.Mean;

        /// <summary>Neuron score weighting before the markers, by ||W_down[:, i]|| (default) or none (authors).</summary>
        public NeuronWeighting NeuronWeighting { get; set; } = NeuronWeighting.DownNorm;

        /// <summary>Down-projection refit after carving each layer, ridge (default: closed-form fit of the experts' W_down columns to the dense FFN output on the calibration tokens) or none (authors).</summary>
        public DownProjectionFit DownFit { get; set; } = DownProjectionFit.Ridge;

        /// <summary>Relative ridge strength of <see cref="DownProjectionFit.Ridge"/>. Default 0.3.</summary>
        public double DownFitRidge { get; set; } = CarveOptions.DefaultDownFitRidge;

        /// <summary>Router bias balancing rounds after carving (0 = none). Default 0.</summary>
        public int RouterBalanceIterations { get; set; }

        /// <summary>The router bias step gamma. Default 1e-3.</summary>
        public float BiasStep { get; set; } = 1e-3f;

        /// <summary>Fine-tuning options, or null (default) to skip fine-tuning (slow on a CPU; see <see cref="MoEFineTuner"/>).</summary>
        public MoEFineTuner.Options? FineTune { get; set; }
    }

    internal CarveMoEEstimator(IHostEnvironment env, Options options) : base(env, nameof(CarveMoEEstimator), options)
    {
        if (string.IsNullOrWhiteSpace(options.ModelFolder))
            throw new ArgumentException("ModelFolder must name the dense model folder to carve.", nameof(options));
        _layout = MoeLayout.Parse(options.Layout);
        if (options.Iterations < 1) throw new ArgumentException($"Iterations must be at least 1; got {options.Iterations}.", nameof(options));
        if (options.RouterBalanceIterations < 0) throw new ArgumentException($"RouterBalanceIterations must be >= 0; got {options.RouterBalanceIterations}.", nameof(options));
        options.ValidateCalibration();
        _options = options;
    }

    /// <summary>Carves the model on the text column's calibration windows and returns the scoring transformer.</summary>
    /// <param name="input">Calibration data (its text column).</param>
    public override LanguageModelTransformer Fit(IDataView input)
    {
        CheckInput(input);
        var handle = LanguageModelHandle.FromFolder(_options.ModelFolder, Modeling.Weights.WeightFormat.Fp32);
        try
        {
            MoECarverEstimator.CarveSequential(handle, input, _options, _layout, Name, _options.Iterations, _options.KAct, _options.Score, _options.ForwardBatch);
            if (_options.RouterBalanceIterations > 0)
            {
                using var ids = tensor(CalibrationData.Windows(input, handle.Tokenizer, _options, Name));  // [samples, length]
                var balance = RouterFitEstimator.Balance(handle, ids, _options.RouterBalanceIterations, _options.BiasStep, _options.ForwardBatch, _options);
                handle.Provenance!["router_balance"] = new System.Text.Json.Nodes.JsonObject
                {
                    ["iterations"] = balance.Iterations, ["bias_step"] = _options.BiasStep,
                    ["imbalance_before"] = balance.ImbalanceBefore, ["imbalance_after"] = balance.ImbalanceAfter,
                };
            }
            if (_options.FineTune is { } fineTune)
            {
                var train = new MoEFineTuner.Options();
                train.CopyCalibrationFrom(fineTune);
                CopyFineTune(fineTune, train);
                train.TextColumnName = _options.TextColumnName;
                MoEFineTuner.Train(FineTuneCores.Default!, handle, input, train, Name);
            }
            handle.UseWeights(Weights);
            return new LanguageModelTransformer(Env, handle, Settings);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static void CopyFineTune(MoEFineTuner.Options from, MoEFineTuner.Options to)
    {
        to.Epochs = from.Epochs;
        to.TrainBatchSize = from.TrainBatchSize;
        to.LearningRate = from.LearningRate;
        to.RouterScaleLearningRate = from.RouterScaleLearningRate;
        to.LoraRank = from.LoraRank;
        to.LoraAlpha = from.LoraAlpha;
        to.LoraDropout = from.LoraDropout;
        to.BiasStep = from.BiasStep;
    }
}
