using Microsoft.ML;
using Microsoft.ML.Runtime;

namespace CMoE.MLNet.Persistence;

/// <summary>
/// A transformer that <c>mlContext.Model.Load</c> can rebuild from a model zip through <see cref="MlNetBridge"/>.
/// Implement it explicitly on the transformer class; its <c>ICanSaveModel.Save</c> calls
/// <see cref="MlNetBridge.Save"/> with a <see cref="ModelPayload"/> of the same <see cref="Format"/>.
/// </summary>
/// <typeparam name="TSelf">The transformer type itself.</typeparam>
internal interface ILoadableTransformer<TSelf> where TSelf : class, ITransformer, ILoadableTransformer<TSelf>
{
    /// <summary>The format this type writes and reads (name = ML.NET loader signature, version range).</summary>
    static abstract ModelFormat Format { get; }

    /// <summary>
    /// Rebuilds the transformer from its payload. The payload's entries are readable only during this call.
    /// Throw <see cref="CMoEFormatException"/> for content that does not make sense.
    /// </summary>
    static abstract TSelf Load(IHostEnvironment env, ModelPayloadReader payload);
}
