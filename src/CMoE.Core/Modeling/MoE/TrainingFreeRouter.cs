using TorchSharp.Modules;
using CMoE.Modeling.Weights;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Modeling.MoE;

/// <summary>
/// CMoE's training-free router (method section 4). For the representative neuron R_j of each routed
/// expert it keeps G_j = W_gate[R_j] / |W_gate[R_j]| and U_j = W_up[R_j] / |W_up[R_j]|; the score is
/// s_j(x) = |(U x)_j * SiLU((G x)_j)|, p = softmax(s) in fp32, the selection is top-a of p + b (b the
/// balancing bias, which affects selection only) and a selected expert's gate is g_j = 1 + p_j u_j
/// (u the learnable scale, 0 at first). Keys: <c>gate</c> [E, d], <c>up</c> [E, d], <c>scale</c> [E] (u),
/// <c>bias</c> [E] (b, a buffer).
/// </summary>
public sealed class TrainingFreeRouter : nn.Module
{
    private readonly Parameter gate;
    private readonly Parameter up;
    private readonly Parameter scale;
    private readonly Tensor bias;
    private readonly FusedWeights _gateUp;   // gate and up are its row ranges: one [2E, d] product on the fast path

    /// <summary>The family's gate activation the scores use.</summary>
    public GatedActivation Activation { get; }

    /// <summary>Creates a router for <paramref name="experts"/> experts over width <paramref name="hidden"/>.</summary>
    public TrainingFreeRouter(int experts, int hidden, ScalarType dtype = ScalarType.Float32, GatedActivation activation = GatedActivation.Silu) : base(nameof(TrainingFreeRouter))
    {
        Activation = activation;
        (_gateUp, var parts) = FusedWeights.Allocate(hidden, [experts, experts], Precision.Of(dtype).Weights);   // in the compute dtype
        gate = new Parameter(parts[0].Values, requires_grad: false);
        up = new Parameter(parts[1].Values, requires_grad: false);
        _gateUp.Bind(gate, up);
        scale = new Parameter(zeros(experts, dtype: ScalarType.Float32), requires_grad: false);
        bias = zeros(experts, dtype: ScalarType.Float32);
        RegisterComponents();
    }

    /// <summary>G [E, d] (normalised representative gate rows).</summary>
    public Parameter Gate => gate;
    /// <summary>U [E, d] (normalised representative up rows).</summary>
    public Parameter Up => up;
    /// <summary>u [E], the learnable gate scale.</summary>
    public Parameter Scale => scale;
    /// <summary>b [E], the balancing bias (selection only).</summary>
    public Tensor Bias => bias;

    /// <summary>G|U as one [2E, d] block (G rows first) while both still live in it, else null.</summary>
    internal StoredWeight? FusedGateUp => _gateUp.TryGet([gate, up]);

    /// <summary>Fills G and U from the representative rows of the dense weights, L2-normalised.</summary>
    public void Initialise(Tensor denseGate, Tensor denseUp, long[] representatives)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var index = tensor(representatives);
        gate.copy_(F.normalize(denseGate.index_select(0, index), dim: 1));
        up.copy_(F.normalize(denseUp.index_select(0, index), dim: 1));
        scale.zero_();
        bias.zero_();
    }

    /// <summary>
    /// Fills G and U with the mean of each expert's L2-normalised dense gate / up rows, L2-normalised again
    /// (ExpertWeaver-style router vectors: the whole expert instead of one representative neuron).
    /// </summary>
    public void InitialiseMean(Tensor denseGate, Tensor denseUp, int[][] expertNeurons)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        long e = expertNeurons.Length, m = expertNeurons[0].Length, d = denseGate.shape[1];
        var index = tensor(expertNeurons.SelectMany(x => x).Select(i => (long)i).ToArray());
        var g = F.normalize(denseGate.index_select(0, index).to(ScalarType.Float32), dim: 1).view(e, m, d).mean([1L]);   // [E, d]
        var u = F.normalize(denseUp.index_select(0, index).to(ScalarType.Float32), dim: 1).view(e, m, d).mean([1L]);
        gate.copy_(F.normalize(g, dim: 1));
        up.copy_(F.normalize(u, dim: 1));
        scale.zero_();
        bias.zero_();
    }

    /// <summary>Router probabilities p = softmax(|U x * SiLU(G x)|): x [n, d] -> [n, E] fp32.</summary>
    public Tensor Probabilities(Tensor x)
    {
        using var scope = NewDisposeScope();
        var scores = (F.linear(x, up) * Activation.Apply(F.linear(x, gate))).abs();        // [n, E]
        return scores.to(ScalarType.Float32).softmax(-1).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Selects the top-<paramref name="active"/> experts of p + b and their gates 1 + p_j u_j:
    /// x [n, d] -> (experts [n, a] int64, gates [n, a] fp32, probabilities [n, E]).
    /// </summary>
    /// <remarks>
    /// With a <paramref name="threshold"/> (dynamic-K, <see cref="ThresholdRouting"/>) the experts are every j with
    /// p_j + b_j &gt;= threshold: [n, E] best first, -1 in the unused slots (their gates are 1 and must be skipped).
    /// </remarks>
    public (Tensor Experts, Tensor Gates, Tensor Probabilities) Route(Tensor x, int active, float? threshold = null)
    {
        using var scope = NewDisposeScope();
        var p = Probabilities(x);                                                 // [n, E]
        Tensor selected, index;
        using (no_grad())
        {
            var scored = p.add(bias.to(p.device), Scalars.One);
            selected = threshold is { } tau ? ThresholdRouting.Select(scored, tau) : scored.topk(active, dim: -1).indexes;   // [n, a] or [n, E]
            index = threshold is null ? selected : selected.clamp_min(Scalars.Of(0L));
        }
        var gates = (p.gather(-1, index) * scale.index_select(0, index.flatten()).view_as(index)).add(Scalars.One, Scalars.One); // [n, a]: 1 + p u
        return (selected.MoveToOuterDisposeScope(), gates.MoveToOuterDisposeScope(), p.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// <see cref="Route"/> for inference with the selection on the host: the two router products run as
    /// tensor operations, the rest (score, softmax, bias, top-a, gates) in plain code on [n, E] floats,
    /// which for a few tokens costs less than dispatching the tensor operations. No gradient.
    /// Returns the selected experts and their gates, token-major [n * a], and the number used per token [n]
    /// (a, or with a <paramref name="threshold"/> the count of p + b &gt;= threshold, at most <paramref name="active"/>).
    /// </summary>
    internal (int[] Experts, double[] Gates, int[] Counts) RouteOnHost(Tensor x, int active, float threshold = float.NegativeInfinity)
    {
        using var scope = NewDisposeScope();
        int e = (int)gate.shape[0];
        float[] g, u;                                                             // G x and U x, element [t, j] at t * stride + j
        int gOffset = 0, uOffset = 0, stride = e;
        if (_gateUp.TryGet([gate, up]) is { } gu)
        {
            g = u = HostFloats(F.linear(x, gu.Values));                           // [n * 2E]: G x | U x per token
            (uOffset, stride) = (e, 2 * e);
        }
        else
        {
            g = HostFloats(F.linear(x, gate));                                    // [n * E]
            u = HostFloats(F.linear(x, up));                                      // [n * E]
        }
        var b = HostFloats(bias);                                                 // [E]
        var scl = HostFloats(scale);                                              // [E]
        int n = g.Length / stride;
        var experts = new int[n * active];
        var gates = new double[n * active];
        var counts = new int[n];
        for (int t = 0; t < n; t++)
            counts[t] = SelectOnHost(g.AsSpan(gOffset + t * stride, e), u.AsSpan(uOffset + t * stride, e), b, scl,
                experts.AsSpan(t * active, active), gates.AsSpan(t * active, active), threshold);
        return (experts, gates, counts);
    }

    /// <summary>
    /// The router's host-side tail for one token, from its two products G x and U x [E]: s_j = |U x * SiLU(G x)|,
    /// p = softmax(s) (fp32 like <see cref="Route"/>), the top-a of p + b written to <paramref name="experts"/> (length a,
    /// best first) and their gates 1 + p_j u_j to <paramref name="gates"/>. With a <paramref name="threshold"/> the
    /// selection stops at the first expert whose p + b is below it (dynamic-K). Returns the number of experts written.
    /// </summary>
    internal static int SelectOnHost(ReadOnlySpan<float> gx, ReadOnlySpan<float> ux, ReadOnlySpan<float> bias, ReadOnlySpan<float> scale,
        Span<int> experts, Span<double> gates, float threshold = float.NegativeInfinity)
    {
        int e = gx.Length;
        Span<double> p = stackalloc double[e];
        double max = double.NegativeInfinity;
        for (int j = 0; j < e; j++)
        {
            double gj = gx[j];
            p[j] = Math.Abs(ux[j] * (float)(gj / (1 + Math.Exp(-gj))));                   // s_j = |U x * SiLU(G x)|
            max = Math.Max(max, p[j]);
        }
        double sum = 0;
        for (int j = 0; j < e; j++) sum += p[j] = Math.Exp(p[j] - max);
        for (int j = 0; j < e; j++) p[j] = (float)(p[j] / sum);                           // softmax, fp32 like Route
        for (int k = 0; k < experts.Length; k++)                                          // top-a of p + b
        {
            int best = -1;
            double bestScore = double.NegativeInfinity;
            for (int j = 0; j < e; j++)
            {
                double score = (float)(p[j] + bias[j]);
                if (score > bestScore && !experts[..k].Contains(j)) (best, bestScore) = (j, score);
            }
            if (bestScore < threshold) return k;                                          // dynamic-K: the rest are below tau
            experts[k] = best;
            gates[k] = (float)(1 + (float)p[best] * scale[best]);                         // g_j = 1 + p_j u_j
        }
        return experts.Length;
    }

    /// <summary>A tensor's values as fp32 on the host (no copy for a contiguous fp32 CPU tensor beyond the array).</summary>
    private static float[] HostFloats(Tensor t)
    {
        if (t.dtype == ScalarType.Float32 && t.device_type == TorchSharp.DeviceType.CPU && t.is_contiguous())
            return t.data<float>().ToArray();
        using var scope = NewDisposeScope();
        var host = t.detach();
        if (host.dtype != ScalarType.Float32) host = host.to(ScalarType.Float32);
        if (host.device_type != TorchSharp.DeviceType.CPU) host = host.cpu();
        return host.contiguous().data<float>().ToArray();
    }
}
