using CMoE.Modeling;
using CMoE.Modeling.MoE;
using static TorchSharp.torch;

namespace CMoE.Carving;

/// <summary>Whether the carved experts' down projections are refitted (<see cref="CarveOptions.DownFit"/>).</summary>
public enum DownProjectionFit
{
    /// <summary>The authors' procedure (default): the experts keep the dense W_down columns.</summary>
    None = 0,

    /// <summary>Ridge regression of the shared and routed W_down columns onto the dense FFN output (<see cref="DownProjectionRefit"/>).</summary>
    Ridge = 1,
}

/// <summary>
/// Closed-form compensation of what a carved layer drops (<see cref="DownProjectionFit.Ridge"/>): the W_down columns of the
/// shared and routed experts are refitted by ridge regression so that, on the calibration tokens, the carved block's output
/// (with the router's own selection) matches the dense FFN's output on the same input. No training and no new weights: the
/// neurons, the router and the cost per token stay as carved; only the down projections' values change.
/// </summary>
/// <remarks>
/// With H [q, N] the carved block's hidden activations per token (shared neurons, then every routed expert's neurons,
/// zero where the router did not select the expert, times the gate g_j of a selected one), Y [q, d] the dense FFN outputs
/// and W0 [d, N] the carved down projections, the fit is W = argmin ||Y - H W^T||^2 + lambda ||W - W0||^2, i.e.
/// W^T = (H^T H + lambda I)^-1 (H^T Y + lambda W0^T), with lambda = ridge * trace(H^T H) / N (so ridge is scale-free).
/// A neuron the router rarely selects keeps (nearly) its dense column; ridge -> infinity gives back the authors' block.
/// Solved in fp64 on the carving device.
/// </remarks>
public static class DownProjectionRefit
{
    /// <summary>Refits <paramref name="block"/>'s down projections in place.</summary>
    /// <param name="block">A freshly carved block (router and threshold final; before any inference path cached its weights).</param>
    /// <param name="inputs">The FFN inputs of the calibration tokens, [q, d].</param>
    /// <param name="denseOutputs">The dense FFN's outputs on <paramref name="inputs"/>, [q, d].</param>
    /// <param name="ridge">Relative ridge strength (&gt; 0).</param>
    /// <returns>The relative squared error ||Y - H W^T||^2 / ||Y||^2 before and after the fit, on the calibration tokens.</returns>
    public static (double Before, double After) Refit(MoeBlock block, Tensor inputs, Tensor denseOutputs, double ridge)
    {
        if (!(ridge > 0)) throw new ArgumentException($"The down-projection ridge must be positive (got {ridge}).", nameof(ridge));
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = inputs.to(ScalarType.Float32);                                                     // [q, d]
        var h = HiddenActivations(block, x);                                                       // [q, N] fp64
        var w0 = DownColumns(block).to(ScalarType.Float64);                                        // [d, N]
        var y = denseOutputs.to(ScalarType.Float64);                                               // [q, d]
        long n = h.shape[1];

        var gram = h.t().matmul(h);                                                                // [N, N]
        double lambda = ridge * gram.diagonal().sum().item<double>() / n;
        using var lambdaScalar = Scalars.Owned(lambda);
        var rhs = h.t().matmul(y).add(w0.t(), lambdaScalar);                                       // [N, d]
        gram.add_(eye(n, dtype: ScalarType.Float64, device: gram.device), lambdaScalar);
        var wt = linalg.solve(gram, rhs);                                                          // [N, d]

        double norm = SquaredNorm(y);
        double before = SquaredNorm(y - h.matmul(w0.t())) / norm;
        double after = SquaredNorm(y - h.matmul(wt)) / norm;
        WriteDownColumns(block, wt.t());
        return (before, after);
    }

    private static double SquaredNorm(Tensor t) => (t * t).sum().item<double>();

    /// <summary>H [q, S + E*m] in fp64: shared activations, then each routed expert's activations times its gate where selected, 0 elsewhere.</summary>
    private static Tensor HiddenActivations(MoeBlock block, Tensor x)
    {
        var shape = block.Shape;
        int e = shape.RoutedExperts, m = shape.ExpertSize, d = shape.Hidden;
        long q = x.shape[0];
        var experts = block.Experts;
        var routed = shape.Activation.Apply(x.matmul(experts.Gate.to(ScalarType.Float32).reshape(e * m, d).t()))
            * x.matmul(experts.Up.to(ScalarType.Float32).reshape(e * m, d).t());                 // [q, E*m]
        var (selected, gates, _) = block.Router.Route(x, block.MaxRoutedPerToken, block.RouterThreshold);   // [q, a] (-1: unused slot)
        var used = selected.ge(Scalars.Of(0L));
        var weight = zeros(q, e, dtype: ScalarType.Float32, device: x.device)
            .scatter_add(1, selected.clamp_min(Scalars.Of(0L)), gates.to(ScalarType.Float32) * used.to(ScalarType.Float32));   // [q, E]
        routed = (routed.view(q, e, m) * weight.unsqueeze(-1)).view(q, e * m);
        if (block.SharedExpert is not { } shared) return routed.to(ScalarType.Float64);
        var sharedH = shape.Activation.Apply(x.matmul(shared.Gate.Weight.to(ScalarType.Float32).t())) * x.matmul(shared.Up.Weight.to(ScalarType.Float32).t());   // [q, S]
        return cat([sharedH, routed], 1).to(ScalarType.Float64);
    }

    /// <summary>The block's down projections side by side, [d, S + E*m] (shared columns first), fp32.</summary>
    private static Tensor DownColumns(MoeBlock block)
    {
        var shape = block.Shape;
        var routed = block.Experts.Down.to(ScalarType.Float32).permute(1, 0, 2).reshape(shape.Hidden, (long)shape.RoutedExperts * shape.ExpertSize);   // [d, E*m]
        return block.SharedExpert is { } shared ? cat([shared.Down.Weight.to(ScalarType.Float32), routed], 1) : routed;
    }

    private static void WriteDownColumns(MoeBlock block, Tensor w)
    {
        var shape = block.Shape;
        long s = block.SharedExpert?.Down.Weight.shape[1] ?? 0;
        if (block.SharedExpert is { } shared)
            shared.Down.Weight.copy_(w.narrow(1, 0, s).to(shared.Down.Weight.dtype));
        var routed = w.narrow(1, s, (long)shape.RoutedExperts * shape.ExpertSize)
            .reshape(shape.Hidden, shape.RoutedExperts, shape.ExpertSize).permute(1, 0, 2);   // [E, d, m]
        block.Experts.Down.copy_(routed.to(block.Experts.Down.dtype));
    }
}
