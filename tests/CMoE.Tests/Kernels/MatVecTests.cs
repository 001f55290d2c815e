using CMoE.Modeling;
using CMoE.Modeling.Kernels;
using CMoE.Modeling.Weights;
using static TorchSharp.torch;

namespace CMoE.Tests.Kernels;

/// <summary>
/// The managed matrix-vector kernels against references computed in double from the stored values, for every weight format,
/// every instruction path this CPU has (forced one at a time), row counts that are not multiples of four, every int8 group
/// size, the accumulate form (y += s W x) and several threads (which must not change a single bit).
/// </summary>
[Collection(KernelPathCollection.Name)]
public class MatVecTests
{
    public static TheoryData<string, int, int> Shapes => new()
    {
        { "fp32", 37, 96 }, { "bf16", 37, 96 }, { "bf16", 5, 7 }, { "int8:32", 37, 96 }, { "int8:64", 21, 128 },
        { "int8:128", 13, 384 }, { "int8:32", 3, 32 }, { "int8", 64, 1024 },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void EveryPathMatchesTheReference(string format, int rows, int cols)
    {
        TorchTestSetup.Pin();
        var f = WeightFormat.Parse(format).For(cols);
        using var scope = NewDisposeScope();
        var source = randn(new long[] { rows, cols }, generator: new Generator(11));
        source[0].zero_();                                                               // an all-zero row (int8 scale 0)
        var stored = StoredWeight.Allocate([rows, cols], f);
        stored.Assign(source);
        var x = randn(new long[] { cols }, generator: new Generator(12)).data<float>().ToArray();
        var view = MatrixView.Of(stored)!.Value;
        double[] reference = Reference(stored, x, out double[] bound);
        var paths = f.Kind == WeightKind.Int8 ? KernelPaths.Int8Available() : f.Kind == WeightKind.Bf16 ? KernelPaths.Bf16Available() : [KernelPath.Scalar];
        try
        {
            foreach (var path in paths)
            {
                KernelPaths.Force(path);
                var y = new float[rows];
                MatVec.Run(view, x, y);
                for (int i = 0; i < rows; i++)
                    Math.Abs(y[i] - reference[i]).Should().BeLessThanOrEqualTo(1e-5 * bound[i] + 1e-6, $"{format} path {path}, row {i}");
                var acc = Enumerable.Repeat(0.5f, rows).ToArray();
                MatVec.Run(view, x, acc, accumulate: true, scale: -2f);
                for (int i = 0; i < rows; i++)
                    Math.Abs(acc[i] - (0.5 - 2 * reference[i])).Should().BeLessThanOrEqualTo(2e-5 * bound[i] + 1e-6, $"{format} path {path}, accumulate, row {i}");
            }
        }
        finally
        {
            KernelPaths.Force(null);
        }
    }

    [Theory]
    [InlineData("int8:32", 37, 96, 3)]
    [InlineData("int8:64", 20, 128, 50)]
    [InlineData("int8:128", 4200, 1024, 12)]                                                // > 4 MB: up to 16 tokens take the managed kernels
    public void Int8LinearMatchesItsReference(string format, int rows, int cols, int tokens)
    {
        TorchTestSetup.Pin();
        var f = WeightFormat.Parse(format).For(cols);
        using var scope = NewDisposeScope();
        var stored = StoredWeight.Allocate([rows, cols], f);
        stored.Assign(randn(new long[] { rows, cols }, generator: new Generator(31)));
        var x = randn(new long[] { tokens, cols }, generator: new Generator(32));
        var y = WeightKernels.Linear(x, stored, null).data<float>().ToArray();
        var xs = x.data<float>().ToArray();
        int limit = WeightKernels.MatVecLimit(MatrixView.Of(stored)!.Value);
        limit.Should().Be(rows * cols > 4 << 20 ? 16 : 4);
        if (tokens <= limit)                                                               // the managed kernels, activations quantized per group
            for (int t = 0; t < tokens; t++)
            {
                double[] reference = Reference(stored, xs.AsSpan(t * cols, cols).ToArray(), out double[] bound);
                for (int i = 0; i < rows; i++)
                    Math.Abs(y[t * rows + i] - reference[i]).Should().BeLessThanOrEqualTo(1e-5 * bound[i] + 1e-6, $"token {t}, row {i}");
            }
        else                                                                               // prefill: the dequantized weights in a GEMM
        {
            var expected = nn.functional.linear(x, stored.Dense(ScalarType.Float32)).data<float>().ToArray();
            for (int i = 0; i < y.Length; i++) Math.Abs(y[i] - expected[i]).Should().BeLessThan(1e-4f, $"value {i}");
        }
    }

    [Fact]
    public void ThreadsGiveTheSameBits()
    {
        TorchTestSetup.Pin();
        using var scope = NewDisposeScope();
        foreach (var format in new[] { "fp32", "bf16", "int8" })
        {
            var stored = StoredWeight.Allocate([1000, 512], WeightFormat.Parse(format).For(512));
            stored.Assign(randn(new long[] { 1000, 512 }, generator: new Generator(21)));
            var x = randn(new long[] { 512 }, generator: new Generator(22)).data<float>().ToArray();
            var view = MatrixView.Of(stored)!.Value;
            long before = MatVec.BytesPerThread;
            try
            {
                var one = new float[1000];
                WorkerPool.Configure(1);
                MatVec.Run(view, x, one);
                var two = new float[1000];
                WorkerPool.Configure(2);
                MatVec.BytesPerThread = 4096;                                            // split even this matrix
                MatVec.Run(view, x, two);
                two.Should().Equal(one, format);
            }
            finally
            {
                MatVec.BytesPerThread = before;
                WorkerPool.Configure(1);
            }
        }
    }

    [Fact]
    public void Int8QuantizationErrorIsAtMostHalfAStep()
    {
        TorchTestSetup.Pin();
        using var scope = NewDisposeScope();
        var w = randn(new long[] { 8, 256 }, generator: new Generator(5)).mul(Scalars.Of(3.0));
        var (q, s) = Int8Quantizer.Quantize(w, 64);
        q.abs().max().item<sbyte>().Should().BeLessThanOrEqualTo((sbyte)127);
        var back = Int8Quantizer.Dequantize(q, s, ScalarType.Float32);
        var step = s.repeat_interleave(64, 1);                                             // [8, 256]: each value's scale
        (back - w).abs().sub(step.mul(Scalars.Of(0.5))).max().item<float>().Should().BeLessThanOrEqualTo(1e-6f);
        var maxes = w.abs().view(8, 4, 64).amax(-1);                                       // the largest of each group is exact up to rounding
        s.mul(Scalars.Of(127.0)).sub(maxes).abs().max().item<float>().Should().BeLessThan(1e-5f);
    }

    /// <summary>y = W x in double from the stored values (int8: with x quantized as the kernels do) and a bound on |terms|.</summary>
    private static double[] Reference(StoredWeight w, float[] x, out double[] bound)
    {
        int rows = (int)w.Values.shape[0], cols = (int)w.Values.shape[1];
        var y = new double[rows];
        bound = new double[rows];
        if (w.Scales is null)
        {
            var dense = w.Dense(ScalarType.Float32).data<float>().ToArray();
            for (int i = 0; i < rows; i++)
                for (int c = 0; c < cols; c++)
                {
                    y[i] += (double)dense[i * cols + c] * x[c];
                    bound[i] += Math.Abs((double)dense[i * cols + c] * x[c]);
                }
            return y;
        }
        int group = (int)(cols / w.Scales.shape[1]);
        var q = w.Values.data<sbyte>().ToArray();
        var s = w.Scales.data<float>().ToArray();
        for (int g = 0; g < cols / group; g++)
        {
            float max = 0;
            for (int c = g * group; c < (g + 1) * group; c++) max = Math.Max(max, Math.Abs(x[c]));
            float sx = max / 127f, inverse = max > 0 ? 127f / max : 0f;
            for (int i = 0; i < rows; i++)
            {
                long dot = 0, abs = 0;
                for (int c = g * group; c < (g + 1) * group; c++)
                {
                    int xq = (int)MathF.Round(x[c] * inverse, MidpointRounding.ToEven);
                    dot += xq * q[i * cols + c];
                    abs += Math.Abs(xq * q[i * cols + c]);
                }
                double scale = (double)s[i * (cols / group) + g] * sx;
                y[i] += dot * scale;
                bound[i] += abs * scale;
            }
        }
        return y;
    }
}

/// <summary>Tests that force kernel paths or resize the shared worker pool run one at a time.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class KernelPathCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "kernel paths and worker pool (process-wide settings)";
}
