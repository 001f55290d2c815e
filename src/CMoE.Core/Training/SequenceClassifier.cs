using CMoE.Modeling;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Training;

/// <summary>
/// Sequence classification on a (dense or carved) causal LM: z = W pool(h) + b, h the final hidden states
/// (after the last RMSNorm), W [C, d], b [C] in fp32 on the model's device. Rows are right-padded to the longest row of a
/// batch; causal attention never lets a real token see the padding after it and every FFN/MoE block works per token, so
/// pooling the real positions only (last real token, or their mean) makes the padding invisible.
/// Does not own the model.
/// </summary>
public sealed class SequenceClassifier : IDisposable
{
    /// <summary>Rows x padded length per forward pass at inference.</summary>
    private const int TokensPerForward = 8192;

    /// <summary>Wraps <paramref name="model"/> with a head of the given weights (W [C, d], b [C], row-major).</summary>
    public SequenceClassifier(LlamaForCausalLM model, ClassifierPooling pooling, float[] weight, float[] bias, long padId)
    {
        int d = model.Config.HiddenSize;
        if (bias.Length < 2 || weight.Length != bias.Length * d)
            throw new ArgumentException($"A classification head needs at least 2 classes and W of [classes, {d}] (got {weight.Length} weights, {bias.Length} biases).");
        Model = model;
        Pooling = pooling;
        PadId = padId;
        Weight = new Parameter(tensor(weight, [bias.Length, d]).to(model.Device), requires_grad: false);   // [C, d]
        Bias = new Parameter(tensor(bias).to(model.Device), requires_grad: false);                          // [C]
    }

    /// <summary>A head drawn from <paramref name="seed"/> (W ~ N(0, 0.02^2), b = 0).</summary>
    public static SequenceClassifier Create(LlamaForCausalLM model, int classes, ClassifierPooling pooling, long padId, int seed)
    {
        if (classes < 2) throw new ArgumentException($"A classifier needs at least 2 classes (got {classes}).");
        int d = model.Config.HiddenSize;
        var rng = new Random(seed);
        var w = new float[classes * d];
        for (int i = 0; i < w.Length; i++)   // Box-Muller: the head is tiny, drawn on the host from the seed alone
            w[i] = (float)(0.02 * Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        return new SequenceClassifier(model, pooling, w, new float[classes], padId);
    }

    /// <summary>The backbone (not owned).</summary>
    public LlamaForCausalLM Model { get; }

    /// <summary>Head input.</summary>
    public ClassifierPooling Pooling { get; }

    /// <summary>The token id the rows are padded with.</summary>
    public long PadId { get; }

    /// <summary>W [C, d] (fp32).</summary>
    public Parameter Weight { get; }

    /// <summary>b [C] (fp32).</summary>
    public Parameter Bias { get; }

    /// <summary>Number of classes C.</summary>
    public int Classes => (int)Bias.shape[0];

    /// <summary>The head as host arrays (W row-major [C, d], b [C]).</summary>
    public (float[] Weight, float[] Bias) HeadValues()
    {
        using var scope = NewDisposeScope();
        return (Weight.detach().cpu().contiguous().data<float>().ToArray(), Bias.detach().cpu().data<float>().ToArray());
    }

    /// <summary>Class logits: ids [b, t] (right-padded), lengths [b] (real tokens, >= 1) -> [b, C] fp32.</summary>
    public Tensor Logits(Tensor ids, Tensor lengths)
    {
        using var scope = NewDisposeScope();
        var hidden = Model.Hidden(ids).to(ScalarType.Float32);                              // [b, t, d]
        var len = lengths.to(ScalarType.Int64, hidden.device);                              // [b]
        Tensor pooled;
        if (Pooling == ClassifierPooling.LastToken)
        {
            var last = len.sub(Scalars.Of(1L)).view(-1, 1, 1).expand(-1, 1, hidden.shape[2]);  // [b, 1, d]
            pooled = hidden.gather(1, last).squeeze(1);                                     // [b, d]
        }
        else
        {
            var positions = arange(Scalars.Of(0L), Scalars.Of(hidden.shape[1]), Scalars.Of(1L), dtype: ScalarType.Int64, device: hidden.device); // [t]
            var mask = positions.unsqueeze(0).lt(len.unsqueeze(1)).to(ScalarType.Float32).unsqueeze(-1); // [b, t, 1]
            pooled = hidden.mul(mask).sum(1).div(mask.sum(1));                              // [b, d]
        }
        return F.linear(pooled, Weight, Bias).MoveToOuterDisposeScope();                    // [b, C]
    }

    /// <summary>Builds the padded batch of <paramref name="rows"/> (token ids, each at least one) on the model's device.</summary>
    public (Tensor Ids, Tensor Lengths) Batch(IReadOnlyList<int[]> rows)
    {
        int b = rows.Count, t = rows.Max(r => r.Length);
        var ids = new long[b * t];
        var lengths = new long[b];
        for (int r = 0; r < b; r++)
        {
            var s = rows[r];
            if (s.Length == 0) throw new ArgumentException("Every row needs at least one token (encode with BOS).");
            lengths[r] = s.Length;
            for (int j = 0; j < t; j++) ids[r * t + j] = j < s.Length ? s[j] : PadId;
        }
        return (tensor(ids, [b, t]).to(Model.Device), tensor(lengths).to(Model.Device));
    }

    /// <summary>Class probabilities (softmax of <see cref="LogitsOf"/>), [rows][C].</summary>
    public float[][] Probabilities(IReadOnlyList<int[]> rows) => LogitsOf(rows).Select(Softmax).ToArray();

    /// <summary>softmax(z) in double precision, as floats.</summary>
    public static float[] Softmax(float[] z)
    {
        double max = z.Max(), sum = 0;
        var e = z.Select(v => Math.Exp(v - max)).ToArray();
        foreach (double v in e) sum += v;
        return e.Select(v => (float)(v / sum)).ToArray();
    }

    /// <summary>
    /// Class logits of each row, in eval mode without gradients: rows sorted by length and run in padded groups of at most
    /// 8,192 tokens, so the backbone takes its fast inference paths (grouped prefill). Returns [rows][C].
    /// </summary>
    public float[][] LogitsOf(IReadOnlyList<int[]> rows)
    {
        var result = new float[rows.Count][];
        if (rows.Count == 0) return result;
        using var noGrad = no_grad();
        var order = Enumerable.Range(0, rows.Count).OrderBy(i => rows[i].Length).ToArray();
        int start = 0;
        while (start < order.Length)
        {
            int end = start + 1;
            while (end < order.Length && (end - start + 1) * rows[order[end]].Length <= TokensPerForward) end++;
            using var scope = NewDisposeScope();
            var group = order[start..end];
            var (ids, lengths) = Batch(group.Select(i => rows[i]).ToList());
            var z = Logits(ids, lengths).cpu().contiguous().data<float>().ToArray();      // [g * C]
            for (int r = 0; r < group.Length; r++) result[group[r]] = z.AsSpan(r * Classes, Classes).ToArray();
            start = end;
        }
        return result;
    }

    /// <summary>Frees the head.</summary>
    public void Dispose()
    {
        Weight.Dispose();
        Bias.Dispose();
    }
}
