using CMoE.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace CMoE.Carving;

/// <summary>
/// Activation profiling (cmoe-method.md, section 1): per-token neuron scores, the top-K_a activation
/// markers a_{t,i}, and the activation rates mu_i. Pure tensor functions: results are float32 on the
/// input's device, inputs are never disposed, and tokens are processed in chunks of rows so the
/// working memory beyond the [q, d_h] result stays bounded.
/// </summary>
public static class ActivationMarkers
{
    /// <summary>K_a, the number of markers per token used by the paper and the authors' code.</summary>
    public const int DefaultMarkersPerToken = 10;

    /// <summary>Tokens processed per chunk.</summary>
    internal const int ChunkRows = 1024;

    /// <summary>
    /// Scores of every neuron for every token: <c>[q, d]</c> inputs against the FFN's gate and up
    /// projections give <c>[q, d_h]</c> scores (see <see cref="ActivationScore"/>).
    /// </summary>
    /// <param name="x">FFN inputs (post-attention RMSNorm output), [q, d].</param>
    /// <param name="wGate">Gate projection weight W_gate, [d_h, d] (Hugging Face <c>gate_proj.weight</c>).</param>
    /// <param name="wUp">Up projection weight W_up, [d_h, d] (Hugging Face <c>up_proj.weight</c>).</param>
    /// <param name="kind">Cosine (authors' code, default) or raw SwiGLU scores.</param>
    /// <returns>Scores, [q, d_h], float32.</returns>
    /// <param name="activation">The gate activation of the model's family (SiLU; tanh-GELU for Gemma-2).</param>
    public static Tensor Scores(Tensor x, Tensor wGate, Tensor wUp, ActivationScore kind = ActivationScore.Cosine, GatedActivation activation = GatedActivation.Silu)
    {
        CheckInputs(x, wGate, wUp);
        using var scope = NewDisposeScope();
        long q = x.shape[0], dh = wGate.shape[0];
        var (g, u) = PrepareWeights(wGate, wUp, kind);                // [d_h, d] each
        var scores = empty(new[] { q, dh }, ScalarType.Float32, x.device);
        for (long start = 0; start < q; start += ChunkRows)
        {
            using var chunkScope = NewDisposeScope();
            long rows = Math.Min(ChunkRows, q - start);
            scores.narrow(0, start, rows).copy_(ChunkScores(x.narrow(0, start, rows), g, u, kind, activation));
        }
        return scores.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Activation markers a_{t,i}: 1 where |score_{t,i}| is among the <paramref name="kAct"/> largest
    /// |score| of token t, else 0. Every row holds exactly <paramref name="kAct"/> ones.
    /// </summary>
    /// <param name="scores">Scores, [q, d_h] (from <see cref="Scores"/>).</param>
    /// <param name="kAct">K_a, markers per token, 1 &lt;= K_a &lt;= d_h (paper: 10).</param>
    /// <returns>Markers, [q, d_h], float32 0/1.</returns>
    public static Tensor Markers(Tensor scores, int kAct = DefaultMarkersPerToken)
    {
        if (scores.ndim != 2)
        {
            throw new ArgumentException(
                $"Scores must be a 2-D [tokens, neurons] tensor; got shape [{string.Join(", ", scores.shape)}].", nameof(scores));
        }
        CheckK(kAct, scores.shape[1]);
        using var scope = NewDisposeScope();
        long q = scores.shape[0];
        var markers = zeros(new[] { q, scores.shape[1] }, ScalarType.Float32, scores.device);
        for (long start = 0; start < q; start += ChunkRows)
        {
            using var chunkScope = NewDisposeScope();
            long rows = Math.Min(ChunkRows, q - start);
            MarkChunk(markers.narrow(0, start, rows), scores.narrow(0, start, rows), kAct);
        }
        return markers.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Scores and markers in one pass, chunk by chunk, without materialising the full [q, d_h] score
    /// matrix: the same result as <c>Markers(Scores(x, wGate, wUp, kind), kAct)</c>.
    /// </summary>
    /// <param name="x">FFN inputs, [q, d].</param>
    /// <param name="wGate">Gate projection weight, [d_h, d].</param>
    /// <param name="wUp">Up projection weight, [d_h, d].</param>
    /// <param name="kAct">K_a, markers per token (paper: 10).</param>
    /// <param name="kind">Cosine (default) or raw scores.</param>
    /// <returns>Markers, [q, d_h], float32 0/1.</returns>
    /// <param name="activation">The gate activation of the model's family (SiLU; tanh-GELU for Gemma-2).</param>
    /// <param name="neuronWeights">Optional per-neuron weights [d_h] multiplied into the scores before the top-K_a (e.g. ||W_down[:, i]||).</param>
    public static Tensor Markers(Tensor x, Tensor wGate, Tensor wUp, int kAct = DefaultMarkersPerToken,
        ActivationScore kind = ActivationScore.Cosine, GatedActivation activation = GatedActivation.Silu, Tensor? neuronWeights = null)
    {
        CheckInputs(x, wGate, wUp);
        CheckK(kAct, wGate.shape[0]);
        using var scope = NewDisposeScope();
        long q = x.shape[0], dh = wGate.shape[0];
        var (g, u) = PrepareWeights(wGate, wUp, kind);
        var markers = zeros(new[] { q, dh }, ScalarType.Float32, x.device);
        for (long start = 0; start < q; start += ChunkRows)
        {
            using var chunkScope = NewDisposeScope();
            long rows = Math.Min(ChunkRows, q - start);
            var chunk = ChunkScores(x.narrow(0, start, rows), g, u, kind, activation);   // [rows, d_h]
            if (neuronWeights is not null) chunk = chunk.mul_(neuronWeights.to(ScalarType.Float32).to(chunk.device));
            MarkChunk(markers.narrow(0, start, rows), chunk, kAct);
        }
        return markers.MoveToOuterDisposeScope();
    }

    /// <summary>Activation rates mu_i = mean over tokens of a_{t,i}.</summary>
    /// <param name="markers">Markers, [q, d_h].</param>
    /// <returns>Rates, [d_h], float32.</returns>
    public static Tensor Rates(Tensor markers)
    {
        if (markers.ndim != 2 || markers.shape[0] < 1)
        {
            throw new ArgumentException(
                $"Markers must be a non-empty 2-D [tokens, neurons] tensor; got shape [{string.Join(", ", markers.shape)}].",
                nameof(markers));
        }
        using var scope = NewDisposeScope();
        var asFloat = markers.narrow(0, 0, markers.shape[0]).to_type(ScalarType.Float32);   // [q, d_h], a fresh view
        return asFloat.mean(new long[] { 0 }).MoveToOuterDisposeScope();                    // [d_h]
    }

    /// <summary>Float32 weights, rows L2-normalised for the cosine score.</summary>
    private static (Tensor Gate, Tensor Up) PrepareWeights(Tensor wGate, Tensor wUp, ActivationScore kind)
    {
        // narrow() makes a fresh view, so the dispose scope never owns the caller's tensor object.
        var g = wGate.narrow(0, 0, wGate.shape[0]).to_type(ScalarType.Float32);   // [d_h, d]
        var u = wUp.narrow(0, 0, wUp.shape[0]).to_type(ScalarType.Float32);       // [d_h, d]
        if (kind == ActivationScore.Cosine)
        {
            g = nn.functional.normalize(g, p: 2, dim: 1);
            u = nn.functional.normalize(u, p: 2, dim: 1);
        }
        return (g, u);
    }

    /// <summary>Scores of one chunk of tokens: h~ = act(x g^T) * (x u^T) (SiLU for SwiGLU), x normalised for the cosine form.</summary>
    private static Tensor ChunkScores(Tensor xChunk, Tensor g, Tensor u, ActivationScore kind, GatedActivation activation)
    {
        var xc = xChunk.to_type(ScalarType.Float32);                            // [rows, d]
        if (kind == ActivationScore.Cosine)
        {
            xc = nn.functional.normalize(xc, p: 2, dim: 1);
        }
        var gate = matmul(xc, g.t());                                           // [rows, d_h]
        var up = matmul(xc, u.t());                                             // [rows, d_h]
        return activation.Apply(gate).mul_(up);                                 // [rows, d_h]
    }

    /// <summary>Writes ones at the top-k |score| positions of each row of <paramref name="target"/>.</summary>
    private static void MarkChunk(Tensor target, Tensor scoreChunk, int kAct)
    {
        var magnitude = scoreChunk.to_type(ScalarType.Float32).abs();           // [rows, d_h]
        var (_, top) = magnitude.topk(kAct, dim: 1);                            // [rows, K_a]
        target.scatter_(1, top, ones(top.shape, ScalarType.Float32, target.device));
    }

    private static void CheckInputs(Tensor x, Tensor wGate, Tensor wUp)
    {
        if (x.ndim != 2)
        {
            throw new ArgumentException(
                $"FFN inputs x must be a 2-D [tokens, hidden] tensor; got shape [{string.Join(", ", x.shape)}]. Flatten batch and sequence first.",
                nameof(x));
        }
        if (wGate.ndim != 2 || wUp.ndim != 2 || !wGate.shape.SequenceEqual(wUp.shape))
        {
            throw new ArgumentException(
                $"W_gate and W_up must both be [d_h, d]; got [{string.Join(", ", wGate.shape)}] and [{string.Join(", ", wUp.shape)}].",
                nameof(wUp));
        }
        if (wGate.shape[1] != x.shape[1])
        {
            throw new ArgumentException(
                $"Hidden size mismatch: x is [{x.shape[0]}, {x.shape[1]}] but W_gate is [{wGate.shape[0]}, {wGate.shape[1]}]; " +
                "pass the FFN input of the same layer (and the weights as [d_h, d], not transposed).",
                nameof(x));
        }
    }

    private static void CheckK(int kAct, long neurons)
    {
        if (kAct < 1 || kAct > neurons)
        {
            throw new ArgumentOutOfRangeException(nameof(kAct), kAct,
                $"Markers per token K_a must be between 1 and the number of neurons ({neurons}); the paper uses {DefaultMarkersPerToken}.");
        }
    }
}
