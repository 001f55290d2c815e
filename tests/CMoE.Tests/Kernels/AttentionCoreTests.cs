using CMoE.Modeling.Kernels;

namespace CMoE.Tests.Kernels;

/// <summary>
/// The decode attention of one KV group against a double-precision softmax(K q / sqrt(d)) V, on the AVX-512 path (16-position
/// reductions, V read once for up to four heads) and the plain path, for position counts around the block size.
/// </summary>
[Collection(KernelPathCollection.Name)]
public class AttentionCoreTests
{
    [Theory]
    [InlineData(3, 64, 1)]
    [InlineData(3, 64, 16)]
    [InlineData(5, 64, 37)]
    [InlineData(1, 128, 600)]
    [InlineData(4, 32, 33)]
    [InlineData(2, 48, 20)]   // a head size the wide path does not take
    public unsafe void MatchesTheReference(int heads, int hd, int positions)
    {
        var random = new Random(heads * 1000 + positions);
        float[] Draw(int n) => Enumerable.Range(0, n).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        float[] q = Draw(heads * hd), keys = Draw(positions * hd), values = Draw(positions * hd);
        var reference = new double[heads * hd];
        for (int h = 0; h < heads; h++)
        {
            var s = new double[positions];
            for (int p = 0; p < positions; p++)
            {
                for (int c = 0; c < hd; c++) s[p] += (double)q[h * hd + c] * keys[p * hd + c];
                s[p] /= Math.Sqrt(hd);
            }
            double max = s.Max(), sum = s.Sum(v => Math.Exp(v - max));
            for (int p = 0; p < positions; p++)
                for (int c = 0; c < hd; c++) reference[h * hd + c] += Math.Exp(s[p] - max) / sum * values[p * hd + c];
        }
        foreach (bool plain in new[] { false, true })
        {
            AttentionCore.ForcePlain = plain;
            try
            {
                var output = new float[heads * hd];
                var scores = new float[AttentionCore.ScratchFloats(heads, positions)];
                fixed (float* qp = q, kp = keys, vp = values, op = output, sp = scores)
                    AttentionCore.Group(qp, heads, hd, kp, vp, positions, op, sp);
                for (int i = 0; i < output.Length; i++)
                    Math.Abs(output[i] - reference[i]).Should().BeLessThan(2e-6, $"plain={plain}, value {i}");
            }
            finally
            {
                AttentionCore.ForcePlain = false;
            }
        }
    }
}
