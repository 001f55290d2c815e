using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using CMoE.Modeling.Weights;

namespace CMoE.Modeling.Kernels;

/// <summary>
/// An activation vector quantized for <see cref="Int8Rows"/>: per group of <see cref="Group"/> values one fp32 scale
/// s = max|x| / 127 and q = round(x / s), stored three ways for the byte dot products: q itself (<see cref="Signed"/>, with
/// <see cref="Offsets"/> = 16 * sum of q per group for the offset-weight VNNI path), and |q| (<see cref="Abs"/>) with its sign
/// (<see cref="Negative"/>: -1 where q &lt; 0, else 0) for the sign-moving paths. Memory belongs to the caller.
/// </summary>
internal readonly unsafe struct QuantizedVector
{
    /// <summary>q per value.</summary>
    public readonly sbyte* Signed;
    /// <summary>16 * (sum of q) per group: the offset correction of <see cref="Int8Rows"/>' VNNI path, one per lane of 8.</summary>
    public readonly int* Offsets;
    /// <summary>|q| per value.</summary>
    public readonly byte* Abs;
    /// <summary>-1 where q &lt; 0, else 0.</summary>
    public readonly sbyte* Negative;
    /// <summary>One scale per group.</summary>
    public readonly float* Scales;
    /// <summary>Values and values per scale.</summary>
    public readonly int Length, Group;

    public QuantizedVector(sbyte* signed, int* offsets, byte* abs, sbyte* negative, float* scales, int length, int group)
    {
        Signed = signed;
        Offsets = offsets;
        Abs = abs;
        Negative = negative;
        Scales = scales;
        (Length, Group) = (length, group);
    }

    /// <summary>Bytes of scratch a vector of <paramref name="length"/> values needs (see <see cref="Quantize"/>).</summary>
    public static int ScratchBytes(int length) => 3 * length + 8 * (length / 32) + 64;

    /// <summary>
    /// Quantizes x[0..length) in groups of <paramref name="group"/> into <paramref name="scratch"/> (at least
    /// <see cref="ScratchBytes"/> bytes) and returns the view of it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static QuantizedVector Quantize(float* x, int length, int group, byte* scratch)
    {
        sbyte* signed = (sbyte*)scratch;
        byte* abs = scratch + length;
        sbyte* negative = (sbyte*)(scratch + 2 * length);
        float* scales = (float*)(((nint)(scratch + 3 * length) + 3) & ~(nint)3);
        int* offsets = (int*)(scales + length / group);
        for (int g = 0; g < length / group; g++)
        {
            int o = g * group;
            float max = Int8Quantizer.MaxAbs(x + o, group);
            scales[g] = max / 127f;
            float inverse = max > 0 ? 127f / max : 0f;
            QuantizeGroup(x + o, signed + o, abs + o, negative + o, group, inverse);
            int sum = 0;
            for (int i = o; i < o + group; i++) sum += signed[i];
            offsets[g] = 16 * sum;
        }
        return new QuantizedVector(signed, offsets, abs, negative, scales, length, group);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void QuantizeGroup(float* x, sbyte* signed, byte* abs, sbyte* negative, int n, float inverse)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var k = Vector256.Create(inverse);
            for (; i + 32 <= n; i += 32)
            {
                var q0 = Vector256.ConvertToInt32(Vector256.Round(Vector256.Load(x + i) * k));
                var q1 = Vector256.ConvertToInt32(Vector256.Round(Vector256.Load(x + i + 8) * k));
                var q2 = Vector256.ConvertToInt32(Vector256.Round(Vector256.Load(x + i + 16) * k));
                var q3 = Vector256.ConvertToInt32(Vector256.Round(Vector256.Load(x + i + 24) * k));
                var q = Vector256.Narrow(Vector256.Narrow(q0, q1), Vector256.Narrow(q2, q3));       // [32] sbyte, in order
                q.Store(signed + i);
                Vector256.Abs(q).AsByte().Store(abs + i);
                Vector256.LessThan(q, Vector256<sbyte>.Zero).Store(negative + i);
            }
        }
        for (; i < n; i++)
        {
            int q = (int)MathF.Round(x[i] * inverse, MidpointRounding.ToEven);
            signed[i] = (sbyte)q;
            abs[i] = (byte)Math.Abs(q);
            negative[i] = (sbyte)(q < 0 ? -1 : 0);
        }
    }
}
