namespace CMoE;

/// <summary>
/// A file or folder given to CMoE.MLNet is not in the expected format (a corrupt safetensors file,
/// a config.json missing a key, a carved folder of an unknown version, ...). The message names the
/// file, the problem and the fix. Also raised for a model zip that cannot be read (not an ML.NET model zip, no CMoE
/// transformer inside, a newer CMoE format version, corrupt).
/// </summary>
/// <remarks>
/// When raised while <c>mlContext.Model.Load</c> constructs a CMoE transformer, ML.NET reaches the loader by
/// reflection and surfaces this exception as the inner exception of a
/// <see cref="System.Reflection.TargetInvocationException"/>; <c>mlContext.LoadCMoEModel</c> unwraps it.
/// </remarks>
public class CMoEFormatException : Exception
{
    /// <summary>Creates the exception with a message that names the problem and the fix.</summary>
    public CMoEFormatException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and the underlying cause.</summary>
    public CMoEFormatException(string message, Exception inner) : base(message, inner) { }
}
