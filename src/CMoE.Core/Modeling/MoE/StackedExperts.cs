using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Modeling.MoE;

/// <summary>
/// The routed experts of one layer, each a SwiGLU slice of the dense FFN, stored stacked so each
/// expert's weights are one contiguous block: keys <c>gate_proj</c> [E, m, d], <c>up_proj</c> [E, m, d],
/// <c>down_proj</c> [E, d, m].
/// </summary>
/// <remarks>
/// Two ways to run expert j: <see cref="Expert"/> (the reference, differentiable, the one the grouped
/// path of <see cref="MoeBlock"/> calls and the place adapters hook in) and <see cref="AddExpertInto"/>
/// (inference fast path: in-place, on cached views of the raw weights; used only while
/// <see cref="RawWeightsUsable"/>).
/// </remarks>
public sealed class StackedExperts : nn.Module
{
    private readonly Parameter gate_proj;
    private readonly Parameter up_proj;
    private readonly Parameter down_proj;
    // Per-expert views [m, d], [m, d], [d, m] of the stacks, rebuilt when a stack's storage changes (e.g. .to(device)).
    private Tensor[]? _gateViews, _upViews, _downViews;
    private (IntPtr Gate, IntPtr Up, IntPtr Down) _viewsOf;

    /// <summary>Creates uninitialised stacks for <paramref name="experts"/> experts of <paramref name="size"/> neurons.</summary>
    public StackedExperts(int experts, int size, int hidden, ScalarType dtype = ScalarType.Float32) : base(nameof(StackedExperts))
    {
        gate_proj = new Parameter(empty(experts, size, hidden, dtype: dtype), requires_grad: false);
        up_proj = new Parameter(empty(experts, size, hidden, dtype: dtype), requires_grad: false);
        down_proj = new Parameter(empty(experts, hidden, size, dtype: dtype), requires_grad: false);
        RegisterComponents();
    }

    /// <summary>W_gate of every expert [E, m, d].</summary>
    public Parameter Gate => gate_proj;
    /// <summary>W_up of every expert [E, m, d].</summary>
    public Parameter Up => up_proj;
    /// <summary>W_down of every expert [E, d, m].</summary>
    public Parameter Down => down_proj;

    /// <summary>
    /// Whether inference fast paths may compute experts from the raw stacked weights
    /// (<see cref="AddExpertInto"/>) instead of <see cref="Expert"/>: true when the module is not in
    /// training mode. Anything that makes <see cref="Expert"/> differ from the raw weights (e.g.
    /// unmerged adapters) must make this false.
    /// </summary>
    public bool RawWeightsUsable => !training && Adapter is null;

    /// <summary>Optional low-rank terms on every expert's matrices (LoRA while fine-tuning); not part of the state dict.</summary>
    internal IExpertAdapter? Adapter { get; set; }

    /// <summary>Expert j on its tokens: x [n, d] -> W_down_j (SiLU(W_gate_j x) * (W_up_j x)) [n, d].</summary>
    public Tensor Expert(long j, Tensor x)
    {
        using var scope = NewDisposeScope();
        if (Adapter is { } lora) return AdaptedExpert(lora, j, x).MoveToOuterDisposeScope();
        var h = F.silu(F.linear(x, gate_proj[j])) * F.linear(x, up_proj[j]);   // [n, m]
        return F.linear(h, down_proj[j]).MoveToOuterDisposeScope();            // [n, d]
    }

    /// <summary>
    /// Inference fast path: y += g * E_j(x) in place, for x [n, d] and y [n, d], reading expert j's
    /// contiguous weight blocks through cached views (6 tensor operations, no gradient). Use only while
    /// <see cref="RawWeightsUsable"/>, after <see cref="PrepareRaw"/> in the same forward pass.
    /// </summary>
    internal void AddExpertInto(int j, Tensor x, Tensor y, double g)
    {
        using var h = F.linear(x, _gateViews![j]);                                // [n, m]
        using var u = F.linear(x, _upViews![j]);                                  // [n, m]
        h.silu_().mul_(u);
        using var o = F.linear(h, _downViews![j]);                                // [n, d]
        if (g == 1.0) y.add_(o);
        else y.add_(o, alpha: g);
    }

    /// <summary>Builds (or refreshes, when a stack was replaced, e.g. moved to another device) the per-expert views <see cref="AddExpertInto"/> reads.</summary>
    internal void PrepareRaw()
    {
        var current = (gate_proj.Handle, up_proj.Handle, down_proj.Handle);
        if (_gateViews is not null && _viewsOf == current) return;
        DisposeViews();
        _gateViews = Views(gate_proj);   // [m, d] each
        _upViews = Views(up_proj);       // [m, d] each
        _downViews = Views(down_proj);   // [d, m] each
        _viewsOf = current;
    }

    private static Tensor[] Views(Tensor stack)
    {
        using var scope = NewDisposeScope();
        var plain = stack.detach();
        var views = new Tensor[stack.shape[0]];
        for (long j = 0; j < views.Length; j++) views[j] = plain[j].DetachFromDisposeScope();
        return views;
    }

    private void DisposeViews()
    {
        foreach (var views in new[] { _gateViews, _upViews, _downViews })
            if (views is not null) foreach (var v in views) v.Dispose();
        _gateViews = _upViews = _downViews = null;
    }

    /// <summary>Frees the cached views with the weights.</summary>
    protected override void Dispose(bool disposing)
    {
        if (disposing) DisposeViews();
        base.Dispose(disposing);
    }

    /// <summary>Expert j with each matrix W replaced by W + (low-rank term): same shapes as <see cref="Expert"/>.</summary>
    private Tensor AdaptedExpert(IExpertAdapter lora, long j, Tensor x)
    {
        var g = F.linear(x, gate_proj[j]) + lora.Delta(ExpertMatrix.Gate, j, x, training);   // [n, m]
        var u = F.linear(x, up_proj[j]) + lora.Delta(ExpertMatrix.Up, j, x, training);       // [n, m]
        var h = F.silu(g) * u;                                                               // [n, m]
        return F.linear(h, down_proj[j]) + lora.Delta(ExpertMatrix.Down, j, h, training);    // [n, d]
    }
}
