using System.Buffers;
using CMoE.Modeling.Kernels;
using CMoE.Modeling.MoE;
using static TorchSharp.torch;

namespace CMoE.Modeling;

/// <summary>
/// A whole decode step in managed code, for CPU inference with fp32 activations: the embedding rows, then per layer
/// h = x + Attn(RMSNorm(x)) and y = h + FFN(RMSNorm(h)) (dense or carved FFN), then the final RMSNorm, on managed buffers
/// with the modules' managed kernels (any weight format, the <see cref="WorkerPool"/>'s threads); the only tensor made is the
/// returned hidden state. The per-module managed paths cost a tensor allocation and two residual tensor operations per layer
/// each, which on a small model is a large share of a step. Applies when every module's managed path does (else null, and
/// <see cref="LlamaForCausalLM.Hidden"/> takes the module-by-module path).
/// </summary>
internal static class DecodeStep
{
    /// <summary>Final hidden states [b, 1, d] for ids [b, 1] at position <c>cache.Length</c> (advancing it), or null where it does not apply.</summary>
    public static Tensor? TryHidden(LlamaForCausalLM model, Tensor ids, KvCache cache)
    {
        if (ids.dim() != 2 || ids.shape[1] != 1 || ids.shape[0] > DecodeKernels.MaxTokens || ids.dtype != ScalarType.Int64
            || ids.device_type != TorchSharp.DeviceType.CPU || !ids.is_contiguous() || !cache.ManagedReadable)
            return null;
        if (model.training || model.DType != ScalarType.Float32 || model.Model.Embeddings.DecodeView() is not { } table || !model.Model.Norm.Decodable) return null;
        var layers = model.Model.Layers;
        var plan = new (LlamaAttention.DecodeViews Attention, SwiGluMlp.DecodeViews? Dense, ManagedMoeDecoder? Carved, MoeBlock? Block)[layers.Count];
        for (int i = 0; i < layers.Count; i++)
        {
            var layer = layers[i];
            if (!layer.InputNorm.Decodable || !layer.FfnNorm.Decodable || layer.Attention.Decodable() is not { } attention) return null;
            if (layer.PostAttentionNorm is not null || layer.PostFfnNorm is not null) return null;   // sandwich norms: the module path
            switch (layer.Mlp)
            {
                case SwiGluMlp dense when dense.Decodable() is { } views: plan[i] = (attention, views, null, null); break;
                case MoeBlock moe when moe.Decodable() is { } decoder: plan[i] = (attention, null, decoder, moe); break;
                default: return null;
            }
        }

        int b = (int)ids.shape[0], d = model.Config.HiddenSize, hd = model.Config.HeadDim;
        var hidden = empty([b, 1, d], dtype: ScalarType.Float32);
        float[] buffers = ArrayPool<float>.Shared.Rent(3 * b * d + 2 * hd);
        try
        {
            var x = buffers.AsSpan(0, b * d);                                            // the residual stream
            var normed = buffers.AsSpan(b * d, b * d);
            var block = buffers.AsSpan(2 * b * d, b * d);                                // a block's output
            var cos = buffers.AsSpan(3 * b * d, hd);
            var sin = buffers.AsSpan(3 * b * d + hd, hd);
            model.RotaryRow(cache.Length, cos, sin);
            model.Model.Embeddings.Lookup(table, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, long>(ids.bytes), x);
            for (int i = 0; i < layers.Count; i++)
            {
                var (attention, dense, carved, moe) = plan[i];
                layers[i].InputNorm.Decode(x, normed);
                layers[i].Attention.Decode(attention, normed, block, cos, sin, cache, i);
                System.Numerics.Tensors.TensorPrimitives.Add(x, block, x);                // h = x + Attn(RMSNorm(x))
                layers[i].FfnNorm.Decode(x, normed);
                if (dense is not null) SwiGluMlp.Decode(dense, normed, block);
                else
                {
                    var (routed, most) = carved!.Forward(normed, block, moe!.MaxRoutedPerToken, moe.RouterThreshold ?? float.NegativeInfinity);
                    moe.CountActive(b, routed, most);
                }
                System.Numerics.Tensors.TensorPrimitives.Add(x, block, x);                // y = h + FFN(RMSNorm(h))
            }
            model.Model.Norm.Decode(x, DecodeKernels.Floats(hidden));
            cache.Length += 1;
            return hidden;
        }
        catch
        {
            hidden.Dispose();
            throw;
        }
        finally
        {
            ArrayPool<float>.Shared.Return(buffers);
        }
    }
}
