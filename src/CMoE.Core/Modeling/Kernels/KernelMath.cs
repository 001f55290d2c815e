using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace CMoE.Modeling.Kernels;

/// <summary>Small helpers the row kernels share: prefetch, the output store, fp32 dot and axpy.</summary>
internal static unsafe class KernelMath
{
    /// <summary>Asks the cache for <paramref name="bytes"/> bytes from <paramref name="p"/> (x86; a no-op elsewhere).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Prefetch(void* p, long bytes)
    {
        if (!Sse.IsSupported) return;
        byte* b = (byte*)p;
        for (long o = 0; o < bytes; o += 64) Sse.Prefetch0(b + o);
    }

    /// <summary>How far ahead (in rows, a multiple of four, at least four) the row kernels prefetch: about 64 KB of weights, so
    /// memory latency is hidden whatever the bytes per row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int PrefetchRows(long rowBytes) => (int)Math.Clamp(((65536 / Math.Max(rowBytes, 1)) + 3) & ~3L, 4, 64);

    /// <summary>y[i] = dot, or y[i] += scale * dot.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(float* y, int i, float dot, bool accumulate, float scale) => y[i] = accumulate ? y[i] + scale * dot : dot;

    /// <summary>a . b over n floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(float* a, float* b, int n)
    {
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            var acc = Vector512<float>.Zero;
            for (; i <= n - 16; i += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), acc);
            sum = Vector512.Sum(acc);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var acc = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), acc);
            sum = Vector256.Sum(acc);
        }
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }

    /// <summary>y += alpha x over n floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AddScaled(float alpha, float* x, float* y, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            var a = Vector512.Create(alpha);
            for (; i <= n - 16; i += 16) Vector512.FusedMultiplyAdd(a, Vector512.Load(x + i), Vector512.Load(y + i)).Store(y + i);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var a = Vector256.Create(alpha);
            for (; i <= n - 8; i += 8) Vector256.FusedMultiplyAdd(a, Vector256.Load(x + i), Vector256.Load(y + i)).Store(y + i);
        }
        for (; i < n; i++) y[i] += alpha * x[i];
    }

    /// <summary>y += a0 x0 + a1 x1 + a2 x2 + a3 x3 over n floats (one load and store of y for four rows).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AddScaled4(float a0, float a1, float a2, float a3, float* x0, float* x1, float* x2, float* x3, float* y, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            Vector512<float> b0 = Vector512.Create(a0), b1 = Vector512.Create(a1), b2 = Vector512.Create(a2), b3 = Vector512.Create(a3);
            for (; i <= n - 16; i += 16)
            {
                var acc = Vector512.FusedMultiplyAdd(b0, Vector512.Load(x0 + i), Vector512.Load(y + i));
                acc = Vector512.FusedMultiplyAdd(b1, Vector512.Load(x1 + i), acc);
                acc = Vector512.FusedMultiplyAdd(b2, Vector512.Load(x2 + i), acc);
                Vector512.FusedMultiplyAdd(b3, Vector512.Load(x3 + i), acc).Store(y + i);
            }
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            Vector256<float> b0 = Vector256.Create(a0), b1 = Vector256.Create(a1), b2 = Vector256.Create(a2), b3 = Vector256.Create(a3);
            for (; i <= n - 8; i += 8)
            {
                var acc = Vector256.FusedMultiplyAdd(b0, Vector256.Load(x0 + i), Vector256.Load(y + i));
                acc = Vector256.FusedMultiplyAdd(b1, Vector256.Load(x1 + i), acc);
                acc = Vector256.FusedMultiplyAdd(b2, Vector256.Load(x2 + i), acc);
                Vector256.FusedMultiplyAdd(b3, Vector256.Load(x3 + i), acc).Store(y + i);
            }
        }
        for (; i < n; i++) y[i] += a0 * x0[i] + a1 * x1[i] + a2 * x2[i] + a3 * x3[i];
    }
}
