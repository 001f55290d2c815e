using static TorchSharp.torch;

namespace CMoE.Modeling;

/// <summary>
/// Key/value cache for incremental decoding: per layer, preallocated [batch, kv_heads, capacity, head_dim]
/// buffers that the attention writes into. <see cref="Length"/> is the number of positions cached.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly Tensor[] _keys;
    private readonly Tensor[] _values;

    private readonly nint[] _keyPointers, _valuePointers;   // fp32 CPU buffers: their memory, for the managed decode kernels

    /// <summary>Allocates the cache for <paramref name="capacity"/> positions.</summary>
    public KvCache(LlamaConfig config, long batch, long capacity, Device device, ScalarType dtype)
    {
        Capacity = capacity;
        _keys = new Tensor[config.NumLayers];
        _values = new Tensor[config.NumLayers];
        _keyPointers = new nint[config.NumLayers];
        _valuePointers = new nint[config.NumLayers];
        for (int i = 0; i < config.NumLayers; i++)
        {
            _keys[i] = zeros([batch, config.NumKeyValueHeads, capacity, config.HeadDim], dtype: dtype, device: device);
            _values[i] = zeros([batch, config.NumKeyValueHeads, capacity, config.HeadDim], dtype: dtype, device: device);
        }
        ManagedReadable = config.NumLayers == 0 || (dtype == ScalarType.Float32 && device.type == TorchSharp.DeviceType.CPU);
        if (ManagedReadable)
            for (int i = 0; i < config.NumLayers; i++)
                unsafe
                {
                    _keyPointers[i] = (nint)DecodeKernels.Pointer(_keys[i]);
                    _valuePointers[i] = (nint)DecodeKernels.Pointer(_values[i]);
                }
    }

    /// <summary>Positions the cache can hold.</summary>
    public long Capacity { get; }

    /// <summary>Positions cached so far (advanced by the model after each forward).</summary>
    public long Length { get; internal set; }

    /// <summary>Writes k, v [batch, kv_heads, n, head_dim] at the current end and returns views of everything cached.</summary>
    internal (Tensor Keys, Tensor Values) Append(int layer, Tensor k, Tensor v)
    {
        long n = k.shape[2];
        EnsureRoom(n);
        _keys[layer].narrow(2, Length, n).copy_(k);
        _values[layer].narrow(2, Length, n).copy_(v);
        return (_keys[layer].narrow(2, 0, Length + n), _values[layer].narrow(2, 0, Length + n));
    }

    /// <summary>Fails with a message naming the fix when <paramref name="n"/> more positions do not fit.</summary>
    internal void EnsureRoom(long n)
    {
        if (Length + n > Capacity)
            throw new InvalidOperationException($"The KV cache holds {Capacity} positions; {Length + n} were needed. Create a larger cache.");
    }

    /// <summary>Whether the managed decode kernels can read and write the buffers (fp32, on the CPU).</summary>
    internal bool ManagedReadable { get; }

    /// <summary>The memory of layer <paramref name="layer"/>'s key and value buffers [batch, kv_heads, capacity, head_dim] (when <see cref="ManagedReadable"/>).</summary>
    internal (nint Keys, nint Values) Pointers(int layer) => (_keyPointers[layer], _valuePointers[layer]);

    /// <summary>The whole key and value buffers of <paramref name="layer"/>, [batch, kv_heads, capacity, head_dim] each (for in-place decode kernels).</summary>
    internal (Tensor Keys, Tensor Values) Buffers(int layer) => (_keys[layer], _values[layer]);

    /// <summary>Frees the buffers.</summary>
    public void Dispose()
    {
        foreach (var t in _keys) t.Dispose();
        foreach (var t in _values) t.Dispose();
    }
}
