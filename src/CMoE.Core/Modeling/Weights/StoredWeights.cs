using CMoE.Modeling.MoE;
using static TorchSharp.torch;

namespace CMoE.Modeling.Weights;

/// <summary>
/// Every weight matrix of a model in its storage format, with its state-dict key (an int8 weight's scales are that key +
/// <see cref="ScaleSuffix"/>): what loading, converting and saving treat as one unit, one place that knows which modules
/// hold stored weights (<see cref="Projection"/>, <see cref="TokenEmbedding"/>, <see cref="StackedExperts"/>).
/// </summary>
internal static class StoredWeights
{
    /// <summary>The suffix of an int8 weight's scale key (<c>q_proj.weight</c> -> <c>q_proj.weight_scale</c>).</summary>
    public const string ScaleSuffix = "_scale";

    /// <summary>(key, weight) for every stored weight of <paramref name="model"/>, keys as in its state dict.</summary>
    public static IEnumerable<(string Key, StoredWeight Weight)> Of(nn.Module model)
    {
        foreach (var (name, module) in model.named_modules())
        {
            string prefix = name.Length == 0 ? "" : name + ".";
            switch (module)
            {
                case Projection p:
                    yield return (prefix + "weight", p.Stored);
                    break;
                case TokenEmbedding e:
                    yield return (prefix + "weight", e.Stored);
                    break;
                case StackedExperts x:
                    yield return (prefix + "gate_proj", x.StoredGate);
                    yield return (prefix + "up_proj", x.StoredUp);
                    yield return (prefix + "down_proj", x.StoredDown);
                    break;
            }
        }
    }

    /// <summary>The bytes of every stored weight of <paramref name="model"/> (values and scales).</summary>
    public static long Bytes(nn.Module model) => Of(model).Sum(w => w.Weight.Bytes);
}
