using CMoE.Modeling.MoE;
using static TorchSharp.torch;

namespace CMoE.Modeling.Weights;

/// <summary>
/// Converts a model (dense or carved, on the CPU) to another weight format: a new model of the same architecture and carved
/// shape with fp32 activations and weights in the target format, filled weight by weight (converted or quantized) from the
/// source, which is left as it was. How a model carved in fp32 becomes an int8 or bf16 one for inference.
/// </summary>
public static class ModelConversion
{
    /// <summary>A copy of <paramref name="source"/> with its weights stored as <paramref name="weights"/>.</summary>
    /// <exception cref="ArgumentException">The source is not on the CPU.</exception>
    public static LlamaForCausalLM Convert(LlamaForCausalLM source, WeightFormat weights)
    {
        if (source.Device.type != TorchSharp.DeviceType.CPU)
            throw new ArgumentException("Weight formats are converted on the CPU; convert before moving the model to another device.");
        var target = new LlamaForCausalLM(source.Config, Precision.Inference(weights));
        try
        {
            for (int i = 0; i < source.Model.Layers.Count; i++)
                if (source.Model.Layers[i].Mlp is MoeBlock block)
                    target.Model.Layers[i].ReplaceMlp(new MoeBlock(block.Shape, target.Precision) { ActiveExperts = block.ActiveExperts });
            using var noGrad = no_grad();
            var from = StoredWeights.Of(source).ToDictionary(w => w.Key, w => w.Weight, StringComparer.Ordinal);
            var handled = new HashSet<string>(StringComparer.Ordinal);
            foreach (var (key, weight) in StoredWeights.Of(target))
            {
                using var scope = NewDisposeScope();
                weight.Assign(from[key].Dense(ScalarType.Float32));
                handled.Add(key);
                handled.Add(key + StoredWeights.ScaleSuffix);
            }
            var sourceState = source.state_dict();
            foreach (var (key, tensor) in target.state_dict())
                if (!handled.Contains(key)) tensor.copy_(sourceState[key]);
            if (source.training) target.train(); else target.eval();
            return target;
        }
        catch
        {
            target.Dispose();
            throw;
        }
    }
}
