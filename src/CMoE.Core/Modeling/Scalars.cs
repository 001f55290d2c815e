using System.Collections.Concurrent;
using TorchSharp;

namespace CMoE.Modeling;

/// <summary>
/// The one place in <c>src/</c> that makes TorchSharp scalars. TorchSharp 0.107 turns a number passed where a
/// <see cref="Scalar"/> is expected (and the implicit alpha = 1 of <c>a + b</c>, <c>add_</c>, <c>square</c>, optimiser steps ...)
/// into a temporary native scalar that only its finalizer frees, and nothing keeps it alive during the native call: a garbage
/// collection on another thread can free it while libtorch reads it ("Expected false to be true" from <c>Scalar::toFloat</c>,
/// "Unknown scalar type" from <c>result_type</c>; dotnet/TorchSharp #1434, #1496). The build bans those APIs in <c>src/</c>
/// (<c>src/BannedSymbols.txt</c>, error RS0030); code passes a scalar from here instead:
/// <list type="bullet">
/// <item><see cref="Of(double)"/> / <see cref="Of(long)"/>: long-lived and shared, for constants and values fixed for a model's
/// life (eps, 1/sqrt(head_dim), rope factors). Interned per value, so use them only for a bounded set of values.</item>
/// <item><see cref="Owned(double)"/>: a new scalar the caller disposes (<c>using var s = Scalars.Owned(lr);</c>), for values that
/// change per call (a learning rate schedule); the <c>using</c> keeps it alive through the native call.</item>
/// </list>
/// </summary>
internal static class Scalars
{
#pragma warning disable RS0030 // the sanctioned factory: every scalar made here is either interned for the process or owned by a using
    private static readonly ConcurrentDictionary<double, Scalar> Doubles = new();
    private static readonly ConcurrentDictionary<long, Scalar> Longs = new();
    private static readonly ConcurrentDictionary<bool, Scalar> Bools = new();

    /// <summary>1.0, e.g. the alpha of a plain addition.</summary>
    public static readonly Scalar One = Of(1.0);

    /// <summary>0.0.</summary>
    public static readonly Scalar Zero = Of(0.0);

    /// <summary>-infinity, e.g. to mask positions out of a max.</summary>
    public static readonly Scalar NegativeInfinity = Of(double.NegativeInfinity);

    /// <summary>A long-lived float scalar for <paramref name="value"/> (interned: use for constants and per-model values only).</summary>
    public static Scalar Of(double value) => Doubles.GetOrAdd(value, v => v.ToScalar());

    /// <summary>A long-lived integer scalar for <paramref name="value"/> (interned: use for constants and per-model values only).</summary>
    public static Scalar Of(long value) => Longs.GetOrAdd(value, v => v.ToScalar());

    /// <summary>A long-lived boolean scalar.</summary>
    public static Scalar Of(bool value) => Bools.GetOrAdd(value, v => v.ToScalar());

    /// <summary>A new float scalar that the caller owns and disposes after the native call (<c>using var s = Scalars.Owned(x);</c>).</summary>
    public static Scalar Owned(double value) => value.ToScalar();
#pragma warning restore RS0030
}
