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

    /// <summary>Creates an uninitialised block of the given shape.</summary>
    public MoeBlock(MoeShape shape, ScalarType dtype = ScalarType.Float32) : base(nameof(MoeBlock))
    {
        Shape = shape;
        ActiveExperts = shape.ActiveExperts;
        if (shape.SharedSize > 0) shared_expert = new SwiGluMlp(shape.Hidden, shape.SharedSize, dtype);
        experts = new StackedExperts(shape.RoutedExperts, shape.ExpertSize, shape.Hidden, dtype);
        router = new TrainingFreeRouter(shape.RoutedExperts, shape.Hidden, dtype);
        shared_neurons = zeros(shape.SharedSize, dtype: ScalarType.Int64);
        expert_neurons = zeros(shape.RoutedExperts, shape.ExpertSize, dtype: ScalarType.Int64);
        representatives = zeros(shape.RoutedExperts, dtype: ScalarType.Int64);
        RegisterComponents();
    }

    /// <summary>The block's sizes.</summary>
    public MoeShape Shape { get; }

    /// <summary>Routed experts used per token (normally <see cref="MoeShape.ActiveExperts"/>; all of them for the dense-equivalence check).</summary>
    public int ActiveExperts { get; set; }

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
        var shape = new MoeShape((int)d, sharedNeurons.Length, expertNeurons.Length, expertNeurons[0].Length, active);
        var block = new MoeBlock(shape, dense.Gate.Weight.dtype);
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

    /// <summary>x [..., d] -> [..., d]: shared expert plus gated selected experts, tokens grouped per expert.</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var tokens = x.reshape(-1, Shape.Hidden);                                      // [n, d]
        var y = shared_expert is not null ? shared_expert.forward(tokens) : zeros_like(tokens);
        int active = Math.Min(ActiveExperts, Shape.RoutedExperts);
        var (selected, gates, _) = router.Route(tokens, active);                       // [n, a], [n, a]
        y = y + RoutedOutput(tokens, selected, gates.to(x.dtype));
        return y.view(x.shape).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// sum_j g_j E_j(x) with tokens grouped by expert: the (token, slot) pairs are sorted by expert,
    /// each expert runs one matrix product over its tokens, and the results are scattered back.
    /// </summary>
    private Tensor RoutedOutput(Tensor tokens, Tensor selected, Tensor gates)
    {
        using var scope = NewDisposeScope();
        long n = tokens.shape[0], a = selected.shape[1];
        var flatExperts = selected.flatten();                                          // [n*a]
        var order = flatExperts.argsort();                                             // [n*a] grouped by expert
        var tokenOfPair = order.div(a, rounding_mode: RoundingMode.floor);             // [n*a]
        var counts = flatExperts.bincount(null, minlength: Shape.RoutedExperts);             // [E]
        if (RecordLoad)
        {
            // Owned by the block (outlives forward's dispose scope); the previous pass's counts are freed.
            LastExpertCounts?.Dispose();
            LastExpertCounts = counts.detach().cpu().clone().DetachFromDisposeScope();
        }
        long[] perExpert = counts.cpu().data<long>().ToArray();
        var xs = tokens.index_select(0, tokenOfPair);                                  // [n*a, d] grouped
        var gs = gates.flatten().index_select(0, order).unsqueeze(-1);                 // [n*a, 1]
        var outputs = new List<Tensor>(perExpert.Length);
        long offset = 0;
        for (int j = 0; j < perExpert.Length; j++)
        {
            if (perExpert[j] == 0) continue;
            outputs.Add(experts.Expert(j, xs.narrow(0, offset, perExpert[j])));        // [c_j, d]
            offset += perExpert[j];
        }
        var routed = cat(outputs, 0) * gs;                                             // [n*a, d]
        return zeros_like(tokens).index_add(0, tokenOfPair, routed, 1).MoveToOuterDisposeScope();
    }
}
