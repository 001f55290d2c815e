using static TorchSharp.torch;

namespace CMoE.Modeling;

/// <summary>
/// Rotary position embedding (RoPE, Su et al.) in the Hugging Face "rotate_half" layout, with the
/// default, linear and llama3 frequency schedules. Caches cos/sin tables and grows them on demand.
/// </summary>
public sealed class RotaryEmbedding : IDisposable
{
    private readonly Tensor _invFreq;   // [head_dim / 2] fp32
    private Tensor? _cos, _sin;         // [positions, head_dim] fp32
    private readonly object _gate = new();

    /// <summary>Builds the inverse frequencies from the config.</summary>
    public RotaryEmbedding(LlamaConfig config)
    {
        int dim = config.HeadDim;
        using var scope = NewDisposeScope();
        var exponents = arange(Scalars.Of(0L), Scalars.Of((long)dim), Scalars.Of(2L), dtype: ScalarType.Int64).to(ScalarType.Float32).div(Scalars.Of((long)dim)); // 2i / dim
        var invFreq = pow(tensor(config.RopeTheta), exponents).reciprocal();                                        // theta^(-2i/dim)
        _invFreq = (config.RopeType switch
        {
            "linear" => invFreq.div(Scalars.Of(config.RopeFactor)),
            "llama3" => Llama3Frequencies(invFreq, config),
            _ => invFreq,
        }).DetachFromDisposeScope();
    }

    /// <summary>cos and sin for positions [start, start + length), on <paramref name="device"/> in <paramref name="dtype"/>: each [length, head_dim].</summary>
    public (Tensor Cos, Tensor Sin) Get(long start, long length, Device device, ScalarType dtype)
    {
        lock (_gate)
        {
            Grow(start + length);
            Tensor cos = _cos!.narrow(0, start, length), sin = _sin!.narrow(0, start, length);
            if (dtype == ScalarType.Float32 && device.type == TorchSharp.DeviceType.CPU) return (cos, sin);   // the tables' own dtype and device
            using (cos) using (sin) return (cos.to(dtype, device), sin.to(dtype, device));
        }
    }

    /// <summary>Copies the fp32 cos and sin of one <paramref name="position"/> ([head_dim] each) into the spans (the managed decode step).</summary>
    public void CopyRow(long position, Span<float> cos, Span<float> sin)
    {
        lock (_gate)        // a concurrent Get may grow (replace) the tables
        {
            Grow(position + 1);
            int d = cos.Length;
            System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(_cos!.bytes).Slice((int)(position * d), d).CopyTo(cos);
            System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(_sin!.bytes).Slice((int)(position * d), d).CopyTo(sin);
        }
    }

    /// <summary>Makes the tables cover at least <paramref name="needed"/> positions (doubling); call under the lock.</summary>
    private void Grow(long needed)
    {
        {
            if (_cos is null || _cos.shape[0] < needed)
            {
                long size = Math.Max(needed, _cos is null ? 1024 : 2 * _cos.shape[0]);
                _cos?.Dispose();
                _sin?.Dispose();
                using var positions = arange(Scalars.Of(0L), Scalars.Of(size), Scalars.Of(1L), dtype: ScalarType.Float32);
                using var freqs = outer(positions, _invFreq);                        // [size, head_dim/2]
                using var emb = cat([freqs, freqs], -1);                              // [size, head_dim]
                // The tables outlive any caller's dispose scope.
                _cos = emb.cos().DetachFromDisposeScope();
                _sin = emb.sin().DetachFromDisposeScope();
            }
        }
    }

    /// <summary>Applies the rotation to x [batch, heads, seq, head_dim] given cos/sin [seq, head_dim].</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        long half = x.shape[^1] / 2;
        var rotated = cat([-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);     // rotate_half(x)
        return (x * cos).add_(rotated * sin, Scalars.One).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The same rotation for x [batch, seq, heads, head_dim] (heads after positions, e.g. q and k side by
    /// side), in 4 tensor operations: x cos + roll(x, head_dim / 2) (sign sin), where sign is -1 on the
    /// first half and +1 on the second, so roll(x) sign = rotate_half(x) exactly.
    /// </summary>
    internal static Tensor ApplyHeadsLast(Tensor x, Tensor cos, Tensor sin, Tensor sign)
    {
        using var scope = NewDisposeScope();
        long half = x.shape[^1] / 2;
        var signedSin = (sin * sign).unsqueeze(1);                                          // [seq, 1, head_dim]
        var y = x * cos.unsqueeze(1);                                                       // [b, seq, heads, head_dim]
        return y.addcmul_(x.roll(half, -1), signedSin, Scalars.One).MoveToOuterDisposeScope();
    }

    /// <summary>Llama 3.1's frequency schedule (smooth interpolation between low and high frequencies).</summary>
    private static Tensor Llama3Frequencies(Tensor invFreq, LlamaConfig c)
    {
        double lowWavelen = c.RopeOriginalMaxPositions / c.RopeLowFreqFactor;
        double highWavelen = c.RopeOriginalMaxPositions / c.RopeHighFreqFactor;
        var wavelen = invFreq.reciprocal().mul(Scalars.Of(2 * Math.PI));                                     // 2 pi / f
        var scaled = where(wavelen.gt(Scalars.Of(lowWavelen)), invFreq.div(Scalars.Of(c.RopeFactor)), invFreq);
        var smooth = wavelen.reciprocal().mul(Scalars.Of((double)c.RopeOriginalMaxPositions))                  // (L / wavelen - low) / (high - low)
            .sub(Scalars.Of(c.RopeLowFreqFactor)).div(Scalars.Of(c.RopeHighFreqFactor - c.RopeLowFreqFactor));
        var smoothed = smooth.neg().add(Scalars.One, Scalars.One).mul(scaled).div(Scalars.Of(c.RopeFactor)).add(smooth.mul(scaled), Scalars.One); // (1 - s) f / k + s f
        var medium = wavelen.ge(Scalars.Of(highWavelen)).logical_and(wavelen.le(Scalars.Of(lowWavelen)));
        return where(medium, smoothed, scaled);
    }

    /// <summary>Frees the tables.</summary>
    public void Dispose()
    {
        _invFreq.Dispose();
        _cos?.Dispose();
        _sin?.Dispose();
    }
}
