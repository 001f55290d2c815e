using CMoE.Modeling.Weights;
using static TorchSharp.torch;

namespace CMoE.Modeling.MoE;

/// <summary>
/// A carved FFN (CMoE): y = E_shared(x) + sum over the selected routed experts j of g_j E_j(x), where
/// every expert is a slice of the dense SwiGLU FFN (rows of W_gate/W_up, columns of W_down) and the
/// selection and gates come from the <see cref="TrainingFreeRouter"/>. With every routed expert active
/// and u = 0 the block computes exactly the dense FFN.
/// State-dict keys under <c>mlp.</c>: <c>shared_expert.{gate,up,down}_proj.weight</c>,
/// <c>experts.{gate,up,down}_proj</c> (stacked), <c>router.{gate,up,scale,bias}</c>, and the int64
/// buffers <c>shared_neurons</c> [S], <c>expert_neurons</c> [E, m], <c>representatives</c> [E] recording
/// which dense neurons each expert holds.
/// </summary>
public sealed class MoeBlock : nn.Module<Tensor, Tensor>
{
    private readonly SwiGluMlp? shared_expert;
    private readonly StackedExperts experts;
    private readonly TrainingFreeRouter router;
    private readonly Tensor shared_neurons;
    private readonly Tensor expert_neurons;
    private readonly Tensor representatives;

    /// <summary>Creates an uninitialised block of the given shape in <paramref name="precision"/> (fp32 when null; the router stays in the compute dtype).</summary>
    public MoeBlock(MoeShape shape, Precision? precision = null) : base(nameof(MoeBlock))
    {
        var p = precision ?? Precision.Fp32;
        Shape = shape;
        ActiveExperts = shape.ActiveExperts;
        if (shape.SharedSize > 0) shared_expert = new SwiGluMlp(shape.Hidden, shape.SharedSize, p, shape.Activation);
        experts = new StackedExperts(shape.RoutedExperts, shape.ExpertSize, shape.Hidden, p, shape.Activation);
        router = new TrainingFreeRouter(shape.RoutedExperts, shape.Hidden, p.Compute, shape.Activation);
        shared_neurons = zeros(shape.SharedSize, dtype: ScalarType.Int64);
        expert_neurons = zeros(shape.RoutedExperts, shape.ExpertSize, dtype: ScalarType.Int64);
        representatives = zeros(shape.RoutedExperts, dtype: ScalarType.Int64);
        RegisterComponents();
    }

    /// <summary>The block's sizes.</summary>
    public MoeShape Shape { get; }

    /// <summary>Routed experts used per token (normally <see cref="MoeShape.ActiveExperts"/>; all of them for the dense-equivalence check).</summary>
    public int ActiveExperts { get; set; }

    /// <summary>
    /// Dynamic-K routing (<see cref="ThresholdRouting"/>): when set, a token uses every routed expert with p + b &gt;= this
    /// threshold (0 to all of them) instead of the top <see cref="ActiveExperts"/>; null (default) = the authors' top-a.
    /// </summary>
    public float? RouterThreshold { get; set; }

    /// <summary>The most routed experts one token can use: all of them with a threshold, else the active count.</summary>
    public int MaxRoutedPerToken => RouterThreshold is null ? Math.Min(ActiveExperts, Shape.RoutedExperts) : Shape.RoutedExperts;

    private long _countedTokens, _countedNeurons, _countedMax;

    /// <summary>
    /// FFN neurons this block really computed since <see cref="ResetActiveCount"/>: tokens seen, neurons computed over
    /// them (shared + the selected routed experts), and the most neurons one token used.
    /// </summary>
    public (long Tokens, long Neurons, long MaxPerToken) ActiveCount =>
        (Interlocked.Read(ref _countedTokens), Interlocked.Read(ref _countedNeurons), Interlocked.Read(ref _countedMax));

    /// <summary>Zeroes <see cref="ActiveCount"/>.</summary>
    public void ResetActiveCount()
    {
        Interlocked.Exchange(ref _countedTokens, 0);
        Interlocked.Exchange(ref _countedNeurons, 0);
        Interlocked.Exchange(ref _countedMax, 0);
    }

    /// <summary>Records <paramref name="tokens"/> tokens that used <paramref name="routedPairs"/> routed experts in all, at most <paramref name="maxRouted"/> for one token.</summary>
    internal void CountActive(long tokens, long routedPairs, int maxRouted)
    {
        Interlocked.Add(ref _countedTokens, tokens);
        Interlocked.Add(ref _countedNeurons, tokens * Shape.SharedSize + routedPairs * Shape.ExpertSize);
        long max = Shape.SharedSize + (long)maxRouted * Shape.ExpertSize, seen;
        while (max > (seen = Interlocked.Read(ref _countedMax)) && Interlocked.CompareExchange(ref _countedMax, max, seen) != seen) { }
    }

    /// <summary>The shared expert, or null when it has no neurons.</summary>
    public SwiGluMlp? SharedExpert => shared_expert;
    /// <summary>The routed experts.</summary>
    public StackedExperts Experts => experts;
    /// <summary>The router.</summary>
    public TrainingFreeRouter Router => router;

    /// <summary>
    /// Tokens routed to each expert by the last forward pass [E] int64 on the CPU (for load balancing), or null. Owned
    /// by the block: valid until the next recorded forward pass; copy what must outlive it.
    /// </summary>
    public Tensor? LastExpertCounts { get; private set; }

    /// <summary>Whether forward passes record <see cref="LastExpertCounts"/>.</summary>
    public bool RecordLoad { get; set; }

    /// <summary>
    /// Carves a dense FFN: the shared expert takes the rows/columns <paramref name="sharedNeurons"/>,
    /// routed expert j the neurons <paramref name="expertNeurons"/>[j], and the router is built from the
    /// representative neurons.
    /// </summary>
    public static MoeBlock FromDense(SwiGluMlp dense, int[] sharedNeurons, int[][] expertNeurons, int[] representativeNeurons, int active)
    {
        long d = dense.Gate.Weight.shape[1];
        if (!dense.Gate.Weight.is_floating_point())
            throw new InvalidOperationException("Carving reads the dense FFN's weights: load the model with fp32 or bf16 weights (int8 is for inference), carve, then convert.");
        var shape = new MoeShape((int)d, sharedNeurons.Length, expertNeurons.Length, expertNeurons[0].Length, active, dense.Activation);
        var block = new MoeBlock(shape, Precision.Of(dense.Gate.Weight.dtype));
        block.CopyFrom(dense, sharedNeurons, expertNeurons, representativeNeurons);
        return block;
    }

    private void CopyFrom(SwiGluMlp dense, int[] sharedIdx, int[][] expertIdx, int[] reps)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Tensor wg = dense.Gate.Weight, wu = dense.Up.Weight, wd = dense.Down.Weight;   // [dh, d], [dh, d], [d, dh]
        if (shared_expert is not null)
        {
            var s = tensor(sharedIdx.Select(i => (long)i).ToArray());
            shared_expert.Gate.Weight.copy_(wg.index_select(0, s));
            shared_expert.Up.Weight.copy_(wu.index_select(0, s));
            shared_expert.Down.Weight.copy_(wd.index_select(1, s));
            shared_neurons.copy_(s);
        }
        var flat = tensor(expertIdx.SelectMany(e => e).Select(i => (long)i).ToArray());       // [E*m]
        long e = Shape.RoutedExperts, m = Shape.ExpertSize, dd = Shape.Hidden;
        experts.Gate.copy_(wg.index_select(0, flat).view(e, m, dd));
        experts.Up.copy_(wu.index_select(0, flat).view(e, m, dd));
        experts.Down.copy_(wd.index_select(1, flat).view(dd, e, m).permute(1, 0, 2));      // [E, d, m]
        expert_neurons.copy_(flat.view(e, m));
        var repIdx = reps.Select(i => (long)i).ToArray();
        representatives.copy_(tensor(repIdx));
        router.Initialise(wg, wu, repIdx);
    }

    /// <summary>
    /// Largest token count for which inference uses the per-token fast path (decode); larger inputs
    /// (prefill, training) group tokens per expert. Default 4.
    /// </summary>
    public int FastPathMaxTokens { get; set; } = 4;

    /// <summary>
    /// x [..., d] -> [..., d]: shared expert plus gated selected experts. Equivalent paths: grouped (tokens sorted
    /// per expert, one <see cref="StackedExperts.Expert"/> product per active expert, differentiable; always used in
    /// training mode) and, for inference on at most <see cref="FastPathMaxTokens"/> tokens, the managed decode kernel
    /// (CPU fp32, <see cref="TryManagedForward"/>) or else the tensor decode path (host-side top-a, then each selected
    /// expert's contiguous weight block applied in place, <see cref="FastForward"/>).
    /// </summary>
    public override Tensor forward(Tensor x)
    {
        if (TryManagedForward(x) is { } managed) return managed;
        using var scope = NewDisposeScope();
        var tokens = x.reshape(-1, Shape.Hidden);                                      // [n, d]
        int active = MaxRoutedPerToken;
        bool fast = tokens.shape[0] <= FastPathMaxTokens && !RecordLoad && experts.RawWeightsUsable;
        var y = fast ? FastForward(tokens, active) : GroupedForward(tokens, active);   // [n, d]
        return y.view(x.shape).MoveToOuterDisposeScope();
    }

    private readonly PerWeights<ManagedMoeDecoder> _decoder = new();

    /// <summary>
    /// The decode path for CPU fp32 inference on at most <see cref="FastPathMaxTokens"/> tokens: the whole block in
    /// one managed call (<see cref="ManagedMoeDecoder"/>) writing into a fresh tensor; null where it does not apply.
    /// </summary>
    internal Tensor? TryManagedForward(Tensor x)
    {
        if (!DecodeKernels.Qualifies(x, Shape.Hidden, FastPathMaxTokens) || Decodable() is not { } decoder) return null;
        var y = empty(x.shape, dtype: ScalarType.Float32);
        var (routed, most) = decoder.Forward(DecodeKernels.Floats(x), DecodeKernels.Floats(y), MaxRoutedPerToken, RouterThreshold ?? float.NegativeInfinity);
        CountActive(x.numel() / Shape.Hidden, routed, most);
        return y;
    }

    /// <summary>The managed decoder of this block, or null when it does not apply (a non-SiLU activation, load recording, training, adapters, other devices).</summary>
    internal ManagedMoeDecoder? Decodable()
    {
        if (Shape.Activation != GatedActivation.Silu || RecordLoad || !experts.RawWeightsUsable || (shared_expert is not null && shared_expert.FusedGateUp is null)) return null;
        return _decoder.Get(ManagedMoeDecoder.Sources(this), () => ManagedMoeDecoder.TryCreate(this));
    }

    /// <summary>The reference path: y = E_shared(x) + sum_j g_j E_j(x), tokens grouped per expert. x [n, d] -> [n, d].</summary>
    internal Tensor GroupedForward(Tensor tokens, int active)
    {
        using var scope = NewDisposeScope();
        var y = shared_expert is not null ? shared_expert.forward(tokens) : zeros_like(tokens);   // [n, d]
        var (selected, gates, _) = router.Route(tokens, active, RouterThreshold);             // [n, a], [n, a] (-1: unused slot)
        return RoutedOutput(tokens, selected, gates.to(tokens.dtype), y).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Decode fast path (inference only): router selection on the host, then per token and selected
    /// expert y_t += g_j E_j(x_t) from the expert's contiguous weights. x [n, d] -> [n, d].
    /// </summary>
    internal Tensor FastForward(Tensor tokens, int active)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var (selected, gates, counts) = router.RouteOnHost(tokens, active, RouterThreshold ?? float.NegativeInfinity);   // [n * a] each, token-major; [n]
        CountActive(counts.Length, counts.Sum(), counts.Max());
        var y = shared_expert is not null ? shared_expert.forward(tokens) : zeros_like(tokens);   // [n, d]
        experts.PrepareRaw();
        long n = tokens.shape[0];
        for (long t = 0; t < n; t++)
        {
            var xt = n == 1 ? tokens : tokens.narrow(0, t, 1);                          // [1, d]
            var yt = n == 1 ? y : y.narrow(0, t, 1);                                    // [1, d], a view of y
            for (int k = 0; k < counts[t]; k++)
                experts.AddExpertInto(selected[t * active + k], xt, yt, gates[t * active + k]);
        }
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// y + sum_j g_j E_j(x) with tokens grouped by expert: the (token, slot) pairs are sorted by expert
    /// on the host (counting sort), each expert runs one matrix product over its tokens, and the results
    /// are scattered back with one index_add.
    /// </summary>
    private Tensor RoutedOutput(Tensor tokens, Tensor selected, Tensor gates, Tensor y)
    {
        using var scope = NewDisposeScope();
        int a = (int)selected.shape[1], e = Shape.RoutedExperts;
        long[] flat;                                                                   // [n*a] expert of each pair
        using (var host = selected.cpu().contiguous()) flat = host.data<long>().ToArray();
        var counts = new long[e];
        long pairs = 0;
        int most = 0;
        for (int t = 0, used = 0; t < flat.Length; t++)                               // -1: an unused slot (dynamic-K)
        {
            if (flat[t] >= 0) { counts[flat[t]]++; pairs++; used++; }
            if ((t + 1) % a == 0) { most = Math.Max(most, used); used = 0; }
        }
        CountActive(flat.Length / a, pairs, most);
        if (RecordLoad)
        {
            LastExpertCounts?.Dispose();                        // owned by the block, outlives forward's scopes
            LastExpertCounts = tensor(counts).DetachFromDisposeScope();
        }
        var next = new long[e];                                                        // counting sort, stable
        for (int j = 1; j < e; j++) next[j] = next[j - 1] + counts[j - 1];
        var order = new long[pairs];                                                   // pair index, grouped by expert
        var tokenOfPair = new long[pairs];
        if (pairs == 0) return y.MoveToOuterDisposeScope();
        for (int p = 0; p < flat.Length; p++)
        {
            if (flat[p] < 0) continue;
            long slot = next[flat[p]]++;
            order[slot] = p;
            tokenOfPair[slot] = p / a;
        }
        var tokenIndex = tensor(tokenOfPair, device: tokens.device);                   // [pairs]
        var xs = tokens.index_select(0, tokenIndex);                                   // [n*a, d] grouped
        var gs = gates.flatten().index_select(0, tensor(order, device: tokens.device)).unsqueeze(-1); // [n*a, 1]
        var outputs = new List<Tensor>(e);
        long offset = 0;
        bool raw = experts.RawWeightsUsable && !(is_grad_enabled() && (tokens.requires_grad || experts.Gate.requires_grad || experts.Up.requires_grad || experts.Down.requires_grad));
        if (raw) experts.PrepareRaw();
        for (int j = 0; j < e; j++)
        {
            if (counts[j] == 0) continue;
            var xj = xs.narrow(0, offset, counts[j]);
            outputs.Add(raw ? experts.ExpertRaw(j, xj) : experts.Expert(j, xj));      // [c_j, d]
            offset += counts[j];
        }
        var routed = (outputs.Count == 1 ? outputs[0] : cat(outputs, 0)) * gs;         // [n*a, d]
        return y.index_add(0, tokenIndex, routed, Scalars.One).MoveToOuterDisposeScope();
    }
}
