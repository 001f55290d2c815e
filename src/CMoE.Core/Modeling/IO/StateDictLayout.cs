using CMoE.Modeling.MoE;
using static TorchSharp.torch;

namespace CMoE.Modeling.IO;

/// <summary>
/// The names, types and shapes of a whole model's state dict in <see cref="LlamaForCausalLM"/>'s order
/// (every parameter: embeddings, each layer's, final norm, lm_head unless tied; then every buffer, layer
/// by layer), without building the model: what a streamed safetensors header needs up front.
/// </summary>
internal static class StateDictLayout
{
    /// <summary>The specs of a dense model, or of a carved one when <paramref name="carved"/> gives the MoE shape.</summary>
    public static List<SafeTensorSpec> Specs(LlamaConfig config, MoeShape? carved = null)
    {
        List<(string Key, ScalarType DType, long[] Shape)> layerParams, layerBuffers;
        using (var template = new DecoderLayer(config))   // uninitialised: costs address space, not memory
        {
            if (carved is not null) template.ReplaceMlp(new MoeBlock(carved));
            layerParams = template.named_parameters().Select(p => (p.name, p.parameter.dtype, p.parameter.shape)).ToList();
            layerBuffers = template.named_buffers().Select(b => (b.name, b.buffer.dtype, b.buffer.shape)).ToList();
        }
        var specs = new List<SafeTensorSpec> { new("model.embed_tokens.weight", ScalarType.Float32, [config.VocabSize, config.HiddenSize]) };
        for (int l = 0; l < config.NumLayers; l++)
            specs.AddRange(layerParams.Select(s => new SafeTensorSpec($"model.layers.{l}.{s.Key}", s.DType, s.Shape)));
        specs.Add(new("model.norm.weight", ScalarType.Float32, [config.HiddenSize]));
        if (!config.TieWordEmbeddings) specs.Add(new("lm_head.weight", ScalarType.Float32, [config.VocabSize, config.HiddenSize]));
        for (int l = 0; l < config.NumLayers; l++)
            specs.AddRange(layerBuffers.Select(s => new SafeTensorSpec($"model.layers.{l}.{s.Key}", s.DType, s.Shape)));
        return specs;
    }

    /// <summary>
    /// The specs of a dense model as its family's Hugging Face checkpoint stores them: <see cref="Specs"/> with the tensors a
    /// family fuses (<see cref="Families.ModelFamily.FusedTensors"/>) replaced by the fused tensor, in the first part's place.
    /// </summary>
    public static List<SafeTensorSpec> CheckpointSpecs(LlamaConfig config)
    {
        var specs = Specs(config);
        foreach (var f in config.Family.FusedTensors)
            for (int l = 0; l < config.NumLayers; l++)
            {
                string prefix = $"model.layers.{l}.";
                var parts = f.Parts.Select(p => specs.First(s => s.Name == prefix + p.Key)).ToList();
                int at = specs.IndexOf(parts[0]);
                specs.RemoveAll(parts.Contains);
                specs.Insert(at, new SafeTensorSpec(prefix + f.Fused, parts[0].DType, [parts.Sum(p => p.Shape[0]), .. parts[0].Shape[1..]]));
            }
        return specs;
    }
}
