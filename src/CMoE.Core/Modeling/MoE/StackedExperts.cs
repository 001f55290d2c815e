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
    // gate_proj and up_proj are views of one [E, 2m, d] block, so expert j's W_gate|W_up is the contiguous block[j] [2m, d].
    // (Held in an array so RegisterComponents does not make it a state-dict buffer.)
    private readonly Tensor[] _gateUpBlock;
    private readonly (IntPtr Gate, IntPtr Up) _blockOf;
    private readonly long _size;
    // Per-expert views rebuilt when a stack is replaced (e.g. .to(device)): W_gate|W_up [2m, d] (when still
    // fused) or W_gate, W_up [m, d] each, and W_down^T [m, d].
    private Tensor[]? _gateUpViews, _gateViews, _upViews, _downTViews;
    private (IntPtr Gate, IntPtr Up, IntPtr Down) _viewsOf;
    private readonly object _viewsGate = new();

    /// <summary>Creates uninitialised stacks for <paramref name="experts"/> experts of <paramref name="size"/> neurons.</summary>
    public StackedExperts(int experts, int size, int hidden, ScalarType dtype = ScalarType.Float32) : base(nameof(StackedExperts))
    {
        _size = size;
        var block = empty(experts, 2 * size, hidden, dtype: dtype).DetachFromDisposeScope();
        _gateUpBlock = [block];
        gate_proj = new Parameter(block.narrow(1, 0, size), requires_grad: false);
        up_proj = new Parameter(block.narrow(1, size, size), requires_grad: false);
        _blockOf = (gate_proj.Handle, up_proj.Handle);
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

    /// <summary>W_gate|W_up of every expert as one [E, 2m, d] block (expert j's rows contiguous) while both stacks still live in it, else null.</summary>
    internal Tensor? FusedGateUp => (gate_proj.Handle, up_proj.Handle) == _blockOf ? _gateUpBlock[0] : null;

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
    /// contiguous weight blocks through cached views (one product for W_gate|W_up, SiLU and the product in
    /// place, one addmm into y; no gradient). Use only while <see cref="RawWeightsUsable"/>, after
    /// <see cref="PrepareRaw"/> in the same forward pass.
    /// </summary>
    internal void AddExpertInto(int j, Tensor x, Tensor y, double g)
    {
        using var h = Hidden(j, x);                                                // [n, m]
        y.addmm_(h, _downTViews![j], beta: 1, alpha: (float)g);                   // y += g h W_down^T
    }

    /// <summary>Inference fast path for many tokens: E_j(x) [n, d] from the cached views (no gradient; after <see cref="PrepareRaw"/>).</summary>
    internal Tensor ExpertRaw(int j, Tensor x)
    {
        using var h = Hidden(j, x);                                                // [n, m]
        return h.matmul(_downTViews![j]);                                          // [n, d]
    }

    /// <summary>SiLU(W_gate_j x) * (W_up_j x) [n, m] from the cached views.</summary>
    private Tensor Hidden(int j, Tensor x)
    {
        if (_gateUpViews is not null)
        {
            using var gu = F.linear(x, _gateUpViews[j]);                          // [n, 2m]
            using var u = gu.narrow(1, _size, _size);
            return gu.narrow(1, 0, _size).silu_().mul_(u);                         // a view of gu's first half
        }
        var h = F.linear(x, _gateViews![j]);                                       // [n, m]
        using var up = F.linear(x, _upViews![j]);                                  // [n, m]
        return h.silu_().mul_(up);
    }

    /// <summary>Builds (or refreshes, when a stack was replaced, e.g. moved to another device) the per-expert views the fast paths read.</summary>
    /// <remarks>Thread-safe: scoring threads share one model, and the first forward of each races to build the views.</remarks>
    internal void PrepareRaw()
    {
        lock (_viewsGate) PrepareRawLocked();
    }

    private void PrepareRawLocked()
    {
        var current = (gate_proj.Handle, up_proj.Handle, down_proj.Handle);
        if (_downTViews is not null && _viewsOf == current) return;
        DisposeViews();
        if (FusedGateUp is { } block)
            _gateUpViews = Views(block, transpose: false);             // [2m, d] each
        else
        {
            _gateViews = Views(gate_proj, transpose: false);         // [m, d] each
            _upViews = Views(up_proj, transpose: false);             // [m, d] each
        }
        _downTViews = Views(down_proj, transpose: true);             // [m, d] each (W_down_j^T)
        _viewsOf = current;
    }

    private static Tensor[] Views(Tensor stack, bool transpose)
    {
        using var scope = NewDisposeScope();
        var plain = stack.detach();
        var views = new Tensor[stack.shape[0]];
        for (long j = 0; j < views.Length; j++) views[j] = (transpose ? plain[j].t() : plain[j]).DetachFromDisposeScope();
        return views;
    }

    private void DisposeViews()
    {
        foreach (var views in new[] { _gateUpViews, _gateViews, _upViews, _downTViews })
            if (views is not null) foreach (var v in views) v.Dispose();
        _gateUpViews = _gateViews = _upViews = _downTViews = null;
    }

    /// <summary>Frees the cached views with the weights.</summary>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            DisposeViews();
            _gateUpBlock[0].Dispose();
        }
        base.Dispose(disposing);
    }

    /// <summary>Expert j with each matrix W replaced by W + (low-rank term): same shapes as <see cref="Expert"/>.</summary>
    private Tensor AdaptedExpert(IExpertAdapter lora, long j, Tensor x)
    {
        var g = F.linear(x, gate_proj[j]).add(lora.Delta(ExpertMatrix.Gate, j, x, training), Scalars.One);   // [n, m]
        var u = F.linear(x, up_proj[j]).add(lora.Delta(ExpertMatrix.Up, j, x, training), Scalars.One);       // [n, m]
        var h = F.silu(g) * u;                                                                               // [n, m]
        return F.linear(h, down_proj[j]).add(lora.Delta(ExpertMatrix.Down, j, h, training), Scalars.One);    // [n, d]
    }
}
