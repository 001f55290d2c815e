using CMoE.Modeling;
using CMoE.Modeling.MoE;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Training;

/// <summary>
/// LoRA on one <see cref="Projection"/> W [out, in]: Delta(x) = (alpha / r) B A dropout(x), with A [r, in]
/// (uniform in +-1/sqrt(in), as PEFT's kaiming init) and B [out, r] (zeros, so training starts at the base model).
/// </summary>
internal sealed class ProjectionLora : IProjectionAdapter, IDisposable
{
    public ProjectionLora(Projection target, int rank, double alpha, double dropout, Generator rng)
    {
        Target = target;
        _rng = rng;
        long outF = target.Weight.shape[0], inF = target.Weight.shape[1];
        var device = target.Weight.device;
        double bound = 1.0 / Math.Sqrt(inF);
        A = new Parameter(empty(rank, inF, device: device).uniform_(-bound, bound, rng), requires_grad: true);  // [r, in]
        B = new Parameter(zeros(outF, rank, device: device), requires_grad: true);                       // [out, r]
        Scaling = alpha / rank;
        Dropout = dropout;
    }

    private readonly Generator _rng;

    public Projection Target { get; }
    public Parameter A { get; }
    public Parameter B { get; }
    public double Scaling { get; }
    private Scalar _scaling => Scalars.Of(Scaling);   // long-lived (one value per run)
    public double Dropout { get; }

    public Tensor Delta(Tensor x, bool training)
    {
        using var scope = NewDisposeScope();
        var xin = x.to(A.dtype);
        if (training && Dropout > 0) xin = LoraDropout.Apply(xin, Dropout, _rng);
        var y = F.linear(F.linear(xin, A), B).mul(_scaling);              // [..., r] -> [..., out]
        return y.to(x.dtype).MoveToOuterDisposeScope();
    }

    /// <summary>W += (alpha / r) B A.</summary>
    public void Merge()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Target.Weight.add_(B.matmul(A).mul(_scaling).to(Target.Weight.dtype), Scalars.One);   // [out, in]
    }

    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
    }
}

/// <summary>
/// Batched LoRA on the stacked routed experts: for each of W_gate, W_up [E, m, d] and W_down [E, d, m] a pair
/// A [E, r, in], B [E, out, r]; expert j uses slice j (Delta_j(x) = (alpha / r) B_j A_j dropout(x)).
/// </summary>
internal sealed class ExpertLora : IExpertAdapter, IDisposable
{
    private readonly Parameter[] _a = new Parameter[3];
    private readonly Parameter[] _b = new Parameter[3];
    private readonly Generator _rng;

    public ExpertLora(StackedExperts target, int rank, double alpha, double dropout, Generator rng)
    {
        Target = target;
        _rng = rng;
        Scaling = alpha / rank;
        Dropout = dropout;
        var device = target.Gate.device;
        Tensor[] weights = [target.Gate, target.Up, target.Down];
        for (int k = 0; k < 3; k++)
        {
            long e = weights[k].shape[0], outF = weights[k].shape[1], inF = weights[k].shape[2];
            double bound = 1.0 / Math.Sqrt(inF);
            _a[k] = new Parameter(empty(e, rank, inF, device: device).uniform_(-bound, bound, rng), requires_grad: true); // [E, r, in]
            _b[k] = new Parameter(zeros(e, outF, rank, device: device), requires_grad: true);                      // [E, out, r]
        }
    }

    public StackedExperts Target { get; }
    public double Scaling { get; }
    private Scalar _scaling => Scalars.Of(Scaling);   // long-lived (one value per run)
    public double Dropout { get; }

    /// <summary>(A, B) of one matrix kind.</summary>
    public (Parameter A, Parameter B) Pair(ExpertMatrix matrix) => (_a[(int)matrix], _b[(int)matrix]);

    public Tensor Delta(ExpertMatrix matrix, long expert, Tensor x, bool training)
    {
        using var scope = NewDisposeScope();
        var (a, b) = Pair(matrix);
        var xin = x.to(a.dtype);
        if (training && Dropout > 0) xin = LoraDropout.Apply(xin, Dropout, _rng);
        var y = F.linear(F.linear(xin, a[expert]), b[expert]).mul(_scaling); // [n, r] -> [n, out]
        return y.to(x.dtype).MoveToOuterDisposeScope();
    }

    /// <summary>W_k += (alpha / r) B_k A_k for every expert at once (batched matmul).</summary>
    public void Merge()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Tensor[] weights = [Target.Gate, Target.Up, Target.Down];
        for (int k = 0; k < 3; k++)
            weights[k].add_(_b[k].bmm(_a[k]).mul(_scaling).to(weights[k].dtype), Scalars.One);   // [E, out, in]
    }

    public void Dispose()
    {
        foreach (var t in _a.Concat(_b)) t.Dispose();
    }
}

/// <summary>
/// Inverted dropout drawn from a given generator (F.dropout draws from libtorch's process-wide generator, which any
/// other thread of the process may advance between the fine-tuner's seeding and the draw).
/// </summary>
internal static class LoraDropout
{
    public static Tensor Apply(Tensor x, double p, Generator rng)
    {
        using var scope = NewDisposeScope();
        var keep = rand(x.shape, dtype: x.dtype, device: x.device, generator: rng).ge_(Scalars.Of(p)).to(x.dtype);
        return x.mul(keep.mul_(Scalars.Of(1.0 / (1.0 - p)))).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Every LoRA adapter of a model: q/k/v/o of each attention block, gate/up/down of each shared expert
/// (or of a dense FFN), and the batched adapters of each layer's routed experts. Adapter state-dict keys are
/// the target's key plus <c>.lora_A</c> / <c>.lora_B</c>, e.g. <c>model.layers.0.self_attn.q_proj.lora_A</c>
/// [r, in] and <c>model.layers.0.mlp.experts.gate_proj.lora_A</c> [E, r, d].
/// </summary>
internal sealed class LoraAdapters : IDisposable
{
    private readonly List<(string Name, ProjectionLora Lora)> _projections = [];
    private readonly List<(string Name, ExpertLora Lora)> _experts = [];

    private LoraAdapters() { }

    /// <summary>Creates adapters on the model's device and hooks them into its projections and experts.</summary>
    /// <remarks>
    /// <paramref name="rng"/> draws the A initialisations and, during training, the dropout masks: the fine-tuner's own
    /// generator, so that other threads drawing from libtorch's global generator cannot change a run.
    /// </remarks>
    public static LoraAdapters Attach(LlamaForCausalLM model, int rank, double alpha, double dropout, Generator rng)
    {
        if (rank < 1) throw new ArgumentException($"LoRA rank must be at least 1 (got {rank}).");
        var set = new LoraAdapters();
        string[] attn = ["q_proj", "k_proj", "v_proj", "o_proj"];
        for (int i = 0; i < model.Model.Layers.Count; i++)
        {
            var layer = model.Model.Layers[i];
            string prefix = $"model.layers.{i}.";
            for (int k = 0; k < 4; k++)
                set.AddProjection($"{prefix}self_attn.{attn[k]}", layer.Attention.Projections[k], rank, alpha, dropout, rng);
            var mlp = layer.Mlp switch
            {
                MoeBlock moe => (Dense: moe.SharedExpert, Prefix: $"{prefix}mlp.shared_expert.", Moe: moe),
                SwiGluMlp dense => (Dense: dense, Prefix: $"{prefix}mlp.", Moe: (MoeBlock?)null),
                _ => (Dense: (SwiGluMlp?)null, Prefix: "", Moe: (MoeBlock?)null),
            };
            if (mlp.Dense is { } d)
            {
                set.AddProjection(mlp.Prefix + "gate_proj", d.Gate, rank, alpha, dropout, rng);
                set.AddProjection(mlp.Prefix + "up_proj", d.Up, rank, alpha, dropout, rng);
                set.AddProjection(mlp.Prefix + "down_proj", d.Down, rank, alpha, dropout, rng);
            }
            if (mlp.Moe is { } moeBlock)
            {
                var lora = new ExpertLora(moeBlock.Experts, rank, alpha, dropout, rng);
                moeBlock.Experts.Adapter = lora;
                set._experts.Add(($"{prefix}mlp.experts", lora));
            }
        }
        return set;
    }

    private void AddProjection(string name, Projection target, int rank, double alpha, double dropout, Generator rng)
    {
        var lora = new ProjectionLora(target, rank, alpha, dropout, rng);
        target.Adapter = lora;
        _projections.Add((name, lora));
    }

    /// <summary>Every trainable adapter tensor.</summary>
    public IEnumerable<Parameter> Parameters() => StateDict().Select(kv => (Parameter)kv.Value);

    /// <summary>Adapter tensors by key (see the class summary).</summary>
    public IEnumerable<KeyValuePair<string, Tensor>> StateDict()
    {
        foreach (var (name, lora) in _projections)
        {
            yield return new($"{name}.lora_A", lora.A);
            yield return new($"{name}.lora_B", lora.B);
        }
        string[] kinds = ["gate_proj", "up_proj", "down_proj"];
        foreach (var (name, lora) in _experts)
            for (int k = 0; k < 3; k++)
            {
                var (a, b) = lora.Pair((ExpertMatrix)k);
                yield return new($"{name}.{kinds[k]}.lora_A", a);
                yield return new($"{name}.{kinds[k]}.lora_B", b);
            }
    }

    /// <summary>Adds every adapter's low-rank product into its target weights and unhooks the adapters.</summary>
    public void MergeAndDetach()
    {
        foreach (var (_, lora) in _projections) lora.Merge();
        foreach (var (_, lora) in _experts) lora.Merge();
        Detach();
    }

    /// <summary>Unhooks the adapters (the model computes its base weights again); the tensors stay usable.</summary>
    public void Detach()
    {
        foreach (var (_, lora) in _projections) lora.Target.Adapter = null;
        foreach (var (_, lora) in _experts) lora.Target.Adapter = null;
    }

    public void Dispose()
    {
        Detach();
        foreach (var (_, lora) in _projections) lora.Dispose();
        foreach (var (_, lora) in _experts) lora.Dispose();
    }
}
