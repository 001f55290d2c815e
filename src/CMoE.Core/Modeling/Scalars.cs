using TorchSharp;

namespace CMoE.Modeling;

/// <summary>
/// Long-lived TorchSharp scalars for the forward paths. TorchSharp 0.107 turns a number passed where a <see cref="Scalar"/>
/// is expected (including the implicit alpha = 1 of <c>a + b</c>, <c>add_</c>, <c>addcmul_</c>, <c>index_add</c>) into a
/// temporary native scalar that only its finalizer frees, and nothing keeps it alive during the native call: under
/// concurrent scoring a garbage collection in between can free it while libtorch reads it ("Expected false to be true"
/// from <c>Scalar::toFloat</c>, seen in the 8-thread scoring test). Scalars held here (or in a module's field) stay alive.
/// </summary>
internal static class Scalars
{
    /// <summary>1, e.g. the alpha of a plain addition.</summary>
    public static readonly Scalar One = 1.0f;

    /// <summary>-infinity (fp32), e.g. to mask positions out of a max.</summary>
    public static readonly Scalar NegativeInfinity = float.NegativeInfinity;
}
