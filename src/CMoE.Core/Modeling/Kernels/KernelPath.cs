using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace CMoE.Modeling.Kernels;

/// <summary>The instruction paths the low-bit row kernels implement, widest first.</summary>
internal enum KernelPath
{
    /// <summary>512-bit vectors (AVX-512: bf16 widening; int8 through AVX-512BW byte products).</summary>
    Vector512,
    /// <summary>256-bit VNNI dot products (AVX-VNNI vpdpbusd; int8 only).</summary>
    Vnni256,
    /// <summary>256-bit vectors (AVX2: bf16 widening; int8 byte products).</summary>
    Vector256,
    /// <summary>Plain scalar code (any CPU; the reference the others are tested against).</summary>
    Scalar,
}

/// <summary>Which path the kernels take: the best the CPU has, or one forced by tests (<see cref="Force"/>).</summary>
internal static class KernelPaths
{
    private static KernelPath? _forced;

    /// <summary>Forces a path (tests compare every path with the scalar reference); null restores the automatic choice.</summary>
    public static void Force(KernelPath? path) => _forced = path;

    /// <summary>The path for bf16 rows.</summary>
    public static KernelPath Bf16 => Pick(Vector512.IsHardwareAccelerated && Avx512F.IsSupported, false, Avx2.IsSupported);

    /// <summary>The path for int8 rows.</summary>
    public static KernelPath Int8 => Pick(Avx512BW.IsSupported, AvxVnni.IsSupported, Avx2.IsSupported);

    /// <summary>The paths this CPU can run for int8 (for tests).</summary>
    public static IEnumerable<KernelPath> Int8Available()
    {
        if (Avx512BW.IsSupported) yield return KernelPath.Vector512;
        if (AvxVnni.IsSupported) yield return KernelPath.Vnni256;
        if (Avx2.IsSupported) yield return KernelPath.Vector256;
        yield return KernelPath.Scalar;
    }

    /// <summary>The paths this CPU can run for bf16 (for tests).</summary>
    public static IEnumerable<KernelPath> Bf16Available()
    {
        if (Vector512.IsHardwareAccelerated && Avx512F.IsSupported) yield return KernelPath.Vector512;
        if (Avx2.IsSupported) yield return KernelPath.Vector256;
        yield return KernelPath.Scalar;
    }

    private static KernelPath Pick(bool v512, bool vnni, bool v256)
    {
        if (_forced is { } f) return f;
        if (vnni) return KernelPath.Vnni256;   // int8: measured fastest where present (docs/benchmarks.md)
        if (v512) return KernelPath.Vector512;
        return v256 ? KernelPath.Vector256 : KernelPath.Scalar;
    }
}
