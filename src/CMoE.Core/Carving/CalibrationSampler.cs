namespace CMoE.Carving;

/// <summary>Draws calibration windows: <c>samples</c> random windows of <c>seqLen</c> tokens from a token stream.</summary>
public static class CalibrationSampler
{
    /// <summary>
    /// Window starts are drawn uniformly from [0, stream.Count - seqLen] with <see cref="Random"/>(seed),
    /// so the same stream and seed always give the same windows.
    /// </summary>
    /// <exception cref="ArgumentException">The stream is shorter than one window.</exception>
    public static long[,] Sample(IReadOnlyList<int> stream, int samples, int seqLen, int seed)
    {
        if (samples < 1) throw new ArgumentException($"samples must be at least 1 (got {samples}).");
        if (seqLen < 2) throw new ArgumentException($"seq-len must be at least 2 (got {seqLen}).");
        if (stream.Count < seqLen)
            throw new ArgumentException($"The calibration text has {stream.Count} tokens, fewer than one window of {seqLen}. Use a longer text or a smaller --seq-len.");
        var rng = new Random(seed);
        var windows = new long[samples, seqLen];
        for (int s = 0; s < samples; s++)
        {
            int start = rng.Next(0, stream.Count - seqLen + 1);
            for (int t = 0; t < seqLen; t++) windows[s, t] = stream[start + t];
        }
        return windows;
    }
}
