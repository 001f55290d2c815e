using static TorchSharp.torch;

namespace CMoE.Modeling;

/// <summary>
/// A value derived from a module's weight tensors (e.g. pointers into their memory for the decode kernels), kept while
/// the module holds the same tensors: a move to another device or dtype replaces them (new handles), and the value is
/// derived again. A null value (the weights do not qualify) is remembered too. Safe for concurrent readers: the entry
/// is one reference, swapped whole.
/// </summary>
internal sealed class PerWeights<T> where T : class
{
    private Tuple<IntPtr[], T?>? _entry;

    /// <summary>The value for <paramref name="weights"/>, from <paramref name="derive"/> when they changed since the last call.</summary>
    public T? Get(ReadOnlySpan<Tensor> weights, Func<T?> derive)
    {
        var entry = _entry;
        if (entry is not null && Same(entry.Item1, weights)) return entry.Item2;
        var handles = new IntPtr[weights.Length];
        for (int i = 0; i < handles.Length; i++) handles[i] = weights[i].Handle;
        var value = derive();
        _entry = Tuple.Create(handles, value);
        return value;
    }

    private static bool Same(IntPtr[] handles, ReadOnlySpan<Tensor> weights)
    {
        if (handles.Length != weights.Length) return false;
        for (int i = 0; i < handles.Length; i++)
            if (handles[i] != weights[i].Handle) return false;
        return true;
    }
}
