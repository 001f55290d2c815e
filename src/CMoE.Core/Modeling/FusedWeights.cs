using CMoE.Modeling.Weights;
using static TorchSharp.torch;

namespace CMoE.Modeling;

/// <summary>
/// One storage block [sum of outs, in] whose row ranges are the weights of several projections that read
/// the same input (q|k|v, gate|up, the router's G|U), in one weight format (int8 scales are per row, so they
/// split the same way). The projections' tensors are contiguous views of it, so loading (in-place copies) and
/// in-place updates keep it current, and an inference fast path can run all of them as one matrix product.
/// <see cref="TryGet"/> returns the block only while every part still lives in it (a part moved to another
/// device or replaced breaks that; callers then fall back to the parts).
/// </summary>
internal sealed class FusedWeights
{
    private readonly StoredWeight _block;   // [sum outs, in]
    private readonly long[] _rows;          // rows of each part
    private IntPtr[] _bound = [];           // handles of the value tensors made from the part views

    private FusedWeights(StoredWeight block, long[] rows) => (_block, _rows) = (block, rows);

    /// <summary>Allocates the uninitialised block and returns it with one view per part, [outs[i], in] each.</summary>
    public static (FusedWeights Fused, StoredWeight[] Parts) Allocate(long inFeatures, long[] outs, WeightFormat format)
    {
        var block = StoredWeight.Allocate([outs.Sum(), inFeatures], format.For(inFeatures));   // lives as long as the module
        var parts = new StoredWeight[outs.Length];
        long row = 0;
        for (int i = 0; i < outs.Length; i++)
        {
            parts[i] = block.Narrow(0, row, outs[i]);
            row += outs[i];
        }
        return (new FusedWeights(block, outs), parts);
    }

    /// <summary>The block's storage format.</summary>
    public WeightFormat Format => _block.Format;

    /// <summary>Records the value tensors built on the part views (in order); <see cref="TryGet"/> checks against them.</summary>
    public void Bind(params Tensor[] values) => _bound = values.Select(p => p.Handle).ToArray();

    /// <summary>
    /// The block [sum outs, in] when the given value tensors are still the bound part views (same tensors,
    /// not replaced, e.g. by a move to another device or dtype), else null.
    /// </summary>
    public StoredWeight? TryGet(ReadOnlySpan<Tensor> parts)
    {
        if (parts.Length != _bound.Length) return null;
        long row = 0, rowElements = _block.Values.shape[1];
        for (int i = 0; i < parts.Length; i++)
        {
            var p = parts[i];
            if (p.Handle != _bound[i] || p.storage_offset() != row * rowElements) return null;
            row += _rows[i];
        }
        return _block;
    }

    /// <summary>True when a fast path may run in place: autograd is off or nothing involved needs a gradient.</summary>
    public static bool NoGradNeeded(Tensor x, Tensor weight) =>
        !is_grad_enabled() || (!x.requires_grad && !weight.requires_grad);
}
