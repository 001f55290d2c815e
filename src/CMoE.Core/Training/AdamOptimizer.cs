using CMoE.Modeling;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace CMoE.Training;

/// <summary>
/// Adam (Kingma and Ba) with L2 weight decay, or AdamW (Loshchilov and Hutter, decoupled weight decay), over parameter groups
/// with their own learning rates: the update of <c>torch.optim.Adam</c> / <c>AdamW</c> (and TorchSharp's, which the tests compare
/// it with), without AMSGrad. TorchSharp's own optimisers make a temporary scalar for every number in every step (see
/// <see cref="Scalars"/>), which a collection on another thread can free mid-call; this one disposes each step's scalars after
/// the native calls that read them. Per parameter p with gradient g at step t:
/// m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
/// p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps), after p *= 1 - lr wd (AdamW) or g += wd p (Adam).
/// </summary>
internal sealed class AdamOptimizer : IDisposable
{
    /// <summary>Parameters sharing a learning rate and weight decay.</summary>
    public sealed class Group(IReadOnlyList<Parameter> parameters, double learningRate, double weightDecay)
    {
        /// <summary>The parameters.</summary>
        public IReadOnlyList<Parameter> Parameters { get; } = parameters;
        /// <summary>The learning rate of the next step (schedules set it before each step).</summary>
        public double LearningRate { get; set; } = learningRate;
        /// <summary>Weight decay (decoupled for AdamW, L2 for Adam).</summary>
        public double WeightDecay { get; } = weightDecay;
    }

    private sealed class State(Parameter p)
    {
        public long Step;
        public readonly Tensor ExpAvg = zeros_like(p).DetachFromDisposeScope();
        public readonly Tensor ExpAvgSq = zeros_like(p).DetachFromDisposeScope();
    }

    private readonly double _beta1, _beta2, _eps;
    private readonly bool _decoupled;
    private readonly Dictionary<Parameter, State> _state = new(ReferenceEqualityComparer.Instance);

    /// <summary>Creates the optimiser; <paramref name="decoupled"/> selects AdamW.</summary>
    public AdamOptimizer(IEnumerable<Group> groups, double beta1, double beta2, double eps = 1e-8, bool decoupled = true)
    {
        Groups = groups.ToList();
        (_beta1, _beta2, _eps, _decoupled) = (beta1, beta2, eps, decoupled);
        foreach (var p in Groups.SelectMany(g => g.Parameters)) _state[p] = new State(p);
    }

    /// <summary>The parameter groups, in order.</summary>
    public IReadOnlyList<Group> Groups { get; }

    /// <summary>Zeroes every gradient (kept allocated, as TorchSharp's optimisers do).</summary>
    public void ZeroGrad()
    {
        foreach (var p in Groups.SelectMany(g => g.Parameters))
        {
            using var grad = p.grad;
            grad?.zero_();
        }
    }

    /// <summary>One update of every parameter that has a gradient.</summary>
    public void Step()
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        using var oneMinusBeta1 = Scalars.Owned(1 - _beta1);
        using var oneMinusBeta2 = Scalars.Owned(1 - _beta2);
        using var beta1 = Scalars.Owned(_beta1);
        using var beta2 = Scalars.Owned(_beta2);
        using var eps = Scalars.Owned(_eps);
        foreach (var group in Groups)
        {
            double lr = group.LearningRate, wd = group.WeightDecay;
            using var decay = Scalars.Owned(_decoupled ? 1 - lr * wd : wd);
            foreach (var p in group.Parameters)
            {
                var grad = p.grad;
                if (grad is null) continue;
                var s = _state[p];
                s.Step++;
                double correction1 = 1 - Math.Pow(_beta1, s.Step), correction2 = 1 - Math.Pow(_beta2, s.Step);
                if (_decoupled) p.mul_(decay);                                              // p *= 1 - lr wd
                else if (wd != 0) grad = grad.add(p, decay);                                 // g += wd p
                s.ExpAvg.mul_(beta1).add_(grad, oneMinusBeta1);                               // m = beta1 m + (1 - beta1) g
                s.ExpAvgSq.mul_(beta2).addcmul_(grad, grad, oneMinusBeta2);                   // v = beta2 v + (1 - beta2) g^2
                using var sqrtCorrection2 = Scalars.Owned(Math.Sqrt(correction2));
                using var stepSize = Scalars.Owned(-lr / correction1);
                var denom = s.ExpAvgSq.sqrt().div_(sqrtCorrection2).add_(eps, Scalars.One);   // sqrt(v) / sqrt(1 - beta2^t) + eps
                p.addcdiv_(s.ExpAvg, denom, stepSize);                                        // p -= lr / (1 - beta1^t) m / denom
            }
        }
    }

    /// <summary>Frees the moments.</summary>
    public void Dispose()
    {
        foreach (var s in _state.Values)
        {
            s.ExpAvg.Dispose();
            s.ExpAvgSq.Dispose();
        }
        _state.Clear();
    }
}
