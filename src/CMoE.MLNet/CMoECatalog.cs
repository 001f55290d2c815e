using System.IO.Compression;
using System.Reflection;
using System.Runtime.ExceptionServices;
using CMoE.MLNet.Data;
using CMoE.MLNet.Persistence;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace CMoE.MLNet;

/// <summary>
/// The public entry points of CMoE.MLNet on <see cref="MLContext"/>.
/// </summary>
public static class CMoECatalog
{
    /// <summary>
    /// Lets <c>mlContext.Model.Load</c> rebuild CMoE transformers in this <see cref="MLContext"/>. Call it once per
    /// MLContext before loading a model zip that contains CMoE transformers in a context that has not itself created
    /// one (typically: a fresh process that only loads). It is idempotent and thread-safe.
    /// </summary>
    /// <remarks>
    /// ML.NET looks up loaders in the MLContext's own component catalog, and the registration mark it scans
    /// assemblies for is internal to ML.NET, so referencing CMoE.MLNet is not enough (as with ML.NET's
    /// <c>CustomMapping</c>, which needs <c>ComponentCatalog.RegisterAssembly</c>). Without this call
    /// <c>Model.Load</c> fails with ML.NET's "Couldn't load model". <see cref="LoadCMoEModel"/> calls it for you.
    /// </remarks>
    /// <param name="mlContext">The context that will load the model.</param>
    /// <returns>The same context, for chaining.</returns>
    public static MLContext RegisterCMoE(this MLContext mlContext)
    {
        ArgumentNullException.ThrowIfNull(mlContext);
        MlNetBridge.RegisterAll(mlContext);
        return mlContext;
    }

    /// <summary>
    /// Loads a model zip written by <c>mlContext.Model.Save</c> that contains CMoE transformers: registers them
    /// (<see cref="RegisterCMoE"/>), loads, and turns every failure into a <see cref="CMoEFormatException"/> whose
    /// message names the file and the fix (not a model zip, no CMoE transformer inside, written by a newer CMoE
    /// format version, corrupt).
    /// </summary>
    /// <param name="mlContext">The context to load into.</param>
    /// <param name="path">The model zip.</param>
    /// <param name="inputSchema">The input schema saved with the model (null if none was saved).</param>
    /// <returns>The loaded transformer (chain).</returns>
    /// <exception cref="FileNotFoundException">No file at <paramref name="path"/>.</exception>
    /// <exception cref="CMoEFormatException">The file is not a model zip with CMoE transformers that this build reads.</exception>
    public static ITransformer LoadCMoEModel(this MLContext mlContext, string path, out DataViewSchema? inputSchema)
    {
        ArgumentNullException.ThrowIfNull(mlContext);
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"Model zip '{path}' not found.", path);
        mlContext.RegisterCMoE();

        ITransformer model;
        try
        {
            model = mlContext.Model.Load(path, out inputSchema);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            for (var inner = e; inner is not null; inner = inner.InnerException)
                if (inner is CMoEFormatException ours)
                    ExceptionDispatchInfo.Capture(ours).Throw();
            throw new CMoEFormatException(IsZip(path)
                ? $"'{path}' is a zip but not an ML.NET model zip that this build can read ({Innermost(e).Message}). Save the model with mlContext.Model.Save(...)."
                : $"'{path}' is not a model zip (not a zip archive). Pass the file written by mlContext.Model.Save(...).", e);
        }
        if (!ContainsCMoE(model))
        {
            (model as IDisposable)?.Dispose();
            throw new CMoEFormatException($"'{path}' is an ML.NET model zip but holds no CMoE transformer; it was not saved from a CMoE pipeline. Load it with mlContext.Model.Load instead.");
        }
        return model;
    }

    private static bool ContainsCMoE(ITransformer model) => model switch
    {
        RowMapperTransformerBase => true,
        IEnumerable<ITransformer> chain => chain.Any(ContainsCMoE),
        _ => false,
    };

    private static Exception Innermost(Exception e)
    {
        while (e.InnerException is not null && e is TargetInvocationException or AggregateException) e = e.InnerException;
        return e;
    }

    private static bool IsZip(string path)
    {
        try
        {
            using var zip = ZipFile.OpenRead(path);
            return true;
        }
        catch (InvalidDataException)
        {
            return false;
        }
    }
}
