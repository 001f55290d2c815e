namespace CMoE.MLNet.Persistence;

/// <summary>
/// A model zip, or one CMoE entry inside it, cannot be read: it is not an ML.NET model zip, it holds no CMoE
/// transformer, it was written by a newer (or too old) CMoE format version, or it is corrupt. The message names the
/// file or entry and what to do.
/// </summary>
/// <remarks>
/// When the error is raised while <c>mlContext.Model.Load</c> constructs a CMoE transformer, ML.NET reaches our loader
/// by reflection and therefore surfaces this exception as the <see cref="Exception.InnerException"/> of a
/// <see cref="System.Reflection.TargetInvocationException"/>; <see cref="CMoECatalog.LoadCMoEModel"/> unwraps it.
/// </remarks>
public sealed class CMoEFormatException : Exception
{
    /// <summary>Creates the exception with a message that names the offending file or entry and the fix.</summary>
    /// <param name="message">What is wrong and what to do.</param>
    public CMoEFormatException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and the error that revealed the problem.</summary>
    /// <param name="message">What is wrong and what to do.</param>
    /// <param name="innerException">The underlying error (for example ML.NET's own).</param>
    public CMoEFormatException(string message, Exception innerException) : base(message, innerException) { }
}
