using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using static TorchSharp.torch;

namespace CMoE.Modeling.Weights;

/// <summary>
/// Symmetric group-wise int8 quantization (see <see cref="WeightKind.Int8"/>): for each group of G consecutive values of a
/// row, s = max|w| / 127 and q = round(w / s) (to nearest, ties to even), so |q| &lt;= 127 and w ~= s q. A group of zeros
/// gets s = 0. Used for weights (once, while loading) and, by the int8 kernels, for activations (per call).
/// </summary>
internal static class Int8Quantizer
{
    /// <summary>Quantizes <paramref name="source"/> (any float dtype and shape [..., cols]) into new int8 values and fp32 scales [..., cols / G].</summary>
    public static (Tensor Values, Tensor Scales) Quantize(Tensor source, int group)
    {
        using var scope = NewDisposeScope();
        long cols = source.shape[^1];
        if (cols % group != 0) throw new ArgumentException($"A row of {cols} values does not split into groups of {group}.");
        var floats = source.detach().to(ScalarType.Float32).cpu().contiguous();
        long[] scaleShape = [.. source.shape[..^1], cols / group];
        var values = empty(source.shape, dtype: ScalarType.Int8);
        var scales = empty(scaleShape, dtype: ScalarType.Float32);
        var x = MemoryMarshal.Cast<byte, float>(floats.bytes);
        var q = MemoryMarshal.Cast<byte, sbyte>(values.bytes);
        var s = MemoryMarshal.Cast<byte, float>(scales.bytes);
        long rows = floats.numel() / cols;
        int rowsPerTask = (int)Math.Max(1, (1 << 20) / cols);
        unsafe
        {
            fixed (float* xp = x) fixed (sbyte* qp = q) fixed (float* sp = s)
            {
                nint xa = (nint)xp, qa = (nint)qp, sa = (nint)sp;
                Parallel.For(0, (int)((rows + rowsPerTask - 1) / rowsPerTask), task =>
                {
                    long start = (long)task * rowsPerTask, end = Math.Min(rows, start + rowsPerTask);
                    long groups = (end - start) * cols / group;
                    Groups((float*)xa + start * cols, (sbyte*)qa + start * cols, (float*)sa + start * cols / group, groups, group);
                });
            }
        }
        return (values.MoveToOuterDisposeScope(), scales.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Quantizes <paramref name="groups"/> consecutive groups of <paramref name="group"/> floats: values into
    /// <paramref name="q"/>, one scale per group into <paramref name="scales"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe void Groups(float* x, sbyte* q, float* scales, long groups, int group)
    {
        for (long g = 0; g < groups; g++, x += group, q += group)
        {
            float max = MaxAbs(x, group);
            float scale = max / 127f;
            scales[g] = scale;
            float inverse = max > 0 ? 127f / max : 0f;
            Round(x, q, group, inverse);
        }
    }

    /// <summary>max |x_i| over n floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe float MaxAbs(float* x, int n)
    {
        int i = 0;
        float max = 0;
        if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var m = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8) m = Vector256.Max(m, Vector256.Abs(Vector256.Load(x + i)));
            max = Math.Max(Math.Max(Math.Max(m[0], m[1]), Math.Max(m[2], m[3])), Math.Max(Math.Max(m[4], m[5]), Math.Max(m[6], m[7])));
        }
        for (; i < n; i++) max = Math.Max(max, Math.Abs(x[i]));
        return max;
    }

    /// <summary>q_i = round(x_i * inverse), to nearest (ties to even), for n values (|x_i * inverse| &lt;= 127 by construction).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void Round(float* x, sbyte* q, int n, float inverse)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var k = Vector256.Create(inverse);
            for (; i <= n - 8; i += 8)
            {
                var r = Vector256.ConvertToInt32(Vector256.Round(Vector256.Load(x + i) * k));   // [8] int32 in [-127, 127]
                for (int j = 0; j < 8; j++) q[i + j] = (sbyte)r[j];
            }
        }
        for (; i < n; i++) q[i] = (sbyte)(int)MathF.Round(x[i] * inverse, MidpointRounding.ToEven);
    }

    /// <summary>w = s q as <paramref name="dtype"/>: values [..., cols] int8 and scales [..., cols / G] -> [..., cols].</summary>
    public static Tensor Dequantize(Tensor values, Tensor scales, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        long cols = values.shape[^1], groups = scales.shape[^1];
        long[] grouped = [.. values.shape[..^1], groups, cols / groups];
        var w = values.to(ScalarType.Float32).reshape(grouped).mul(scales.unsqueeze(-1));   // [..., groups, G]
        return w.reshape(values.shape).to(dtype).MoveToOuterDisposeScope();
    }
}
