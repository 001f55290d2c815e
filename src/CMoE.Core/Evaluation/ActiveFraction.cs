using CMoE.Modeling;
using CMoE.Modeling.MoE;

namespace CMoE.Evaluation;

/// <summary>
/// The share of FFN neurons a model really computed per token, from the counters of its carved blocks
/// (<see cref="MoeBlock.ActiveCount"/>): mean = neurons computed over all layers and tokens / (tokens x layers x d_h);
/// max = the largest share one token used in one layer. A dense model computes every neuron (1.0 and 1.0).
/// </summary>
public static class ActiveFraction
{
    /// <summary>Zeroes the counters of every carved block of <paramref name="model"/>.</summary>
    public static void Reset(LlamaForCausalLM model)
    {
        foreach (var layer in model.Model.Layers)
            if (layer.Mlp is MoeBlock moe) moe.ResetActiveCount();
    }

    /// <summary>(mean, max) active FFN fraction since <see cref="Reset"/>; a layer with a dense FFN counts as 1.</summary>
    public static (double Mean, double Max) Measured(LlamaForCausalLM model)
    {
        double sum = 0, max = 0;
        int layers = 0;
        foreach (var layer in model.Model.Layers)
        {
            layers++;
            if (layer.Mlp is not MoeBlock moe) { sum += 1; max = 1; continue; }
            var (tokens, neurons, most) = moe.ActiveCount;
            double dh = moe.Shape.IntermediateSize;
            if (tokens == 0) { sum += moe.Shape.ActiveFraction; max = Math.Max(max, moe.Shape.ActiveFraction); continue; }
            sum += neurons / (tokens * dh);
            max = Math.Max(max, most / dh);
        }
        return layers == 0 ? (1, 1) : (sum / layers, max);
    }
}
