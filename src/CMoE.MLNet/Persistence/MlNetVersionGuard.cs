using System.Reflection;
using Microsoft.ML;

namespace CMoE.MLNet.Persistence;

/// <summary>
/// CMoE.MLNet's model-zip bridge reads internals of one Microsoft.ML release (<see cref="MlNetBridge.BuiltForMlNetVersion"/>);
/// the package pins it exactly (<c>[5.0.1]</c>). An app that loads another version anyway (a binding redirect, a newer
/// package forced by another dependency) fails at the first CMoE estimator or transformer with this message instead of
/// writing or reading a zip wrongly later.
/// </summary>
internal static class MlNetVersionGuard
{
    private static readonly Lazy<string?> Problem = new(Check);

    /// <summary>The version of Microsoft.ML in this process (e.g. "5.0.1"), without the build metadata.</summary>
    public static string LoadedVersion
    {
        get
        {
            var core = typeof(MLContext).Assembly;
            string informational = core.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
                ?? core.GetName().Version?.ToString() ?? "unknown";
            int plus = informational.IndexOf('+');
            return plus >= 0 ? informational[..plus] : informational;
        }
    }

    /// <summary>Throws <see cref="InvalidOperationException"/> naming both versions and the fix when another Microsoft.ML is loaded.</summary>
    public static void EnsureSupported()
    {
        if (Problem.Value is { } message) throw new InvalidOperationException(message);
    }

    /// <summary>The message for <paramref name="loaded"/>, or null when it is the supported version.</summary>
    internal static string? Describe(string loaded) =>
        loaded == MlNetBridge.BuiltForMlNetVersion
            ? null
            : $"CMoE.MLNet needs Microsoft.ML {MlNetBridge.BuiltForMlNetVersion} exactly (its model-zip persistence reads that release's internals), " +
              $"but Microsoft.ML {loaded} is loaded. Reference Microsoft.ML {MlNetBridge.BuiltForMlNetVersion} in the app " +
              $"(<PackageReference Include=\"Microsoft.ML\" Version=\"[{MlNetBridge.BuiltForMlNetVersion}]\" />), or use a CMoE.MLNet built for {loaded}.";

    private static string? Check() => Describe(LoadedVersion);
}
