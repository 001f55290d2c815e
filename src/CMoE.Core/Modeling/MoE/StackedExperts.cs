using CMoE.Modeling.Kernels;
using CMoE.Modeling.Weights;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Modeling.MoE;

/// <summary>
/// The routed experts of one layer, each a SwiGLU slice of the dense FFN, stored stacked so each
/// expert's weights are one contiguous block: keys <c>gate_proj</c> [E, m, d], <c>up_proj</c> [E, m, d],
/// <c>down_proj</c> [E, d, m], in the model's weight format (int8 adds <c>gate_proj_scale</c>, <c>up_proj_scale</c>,
/// <c>down_proj_scale</c>, see <see cref="StoredWeight"/>).
/// </summary>
/// <remarks>
/// Two ways to run expert j: <see cref="Expert"/> (the reference, differentiable, the one the grouped
/// path of <see cref="MoeBlock"/> calls and the place adapters hook in) and <see cref="AddExpertInto"/> /
/// <see cref="ExpertRaw"/> (inference fast paths on cached per-expert views of the raw weights; used only while
/// <see cref="RawWeightsUsable"/>).
/// </remarks>
public sealed class StackedExperts : nn.Module
{
    private readonly Tensor gate_proj;             // [E, m, d]: Parameter (fp32, bf16) or int8 values
    private readonly Tensor up_proj;               // [E, m, d]
    private readonly Tensor down_proj;             // [E, d, m]
    private readonly Tensor? gate_proj_scale, up_proj_scale, down_proj_scale;   // int8 only
    // gate_proj and up_proj are views of one [E, 2m, d] block, so expert j's W_gate|W_up is the contiguous block[j] [2m, d].
    // (Held in an array so RegisterComponents does not make it a state-dict entry.)
    private readonly StoredWeight[] _gateUpBlock;
    private readonly (IntPtr Gate, IntPtr Up) _blockOf;
    private readonly WeightFormat _gateUpFormat, _downFormat;
    private readonly long _size;
    // Per-expert views rebuilt when a stack is replaced (e.g. .to(device)): W_gate|W_up [2m, d] (when still fused) or
    // W_gate, W_up [m, d] each, and W_down [d, m].
    private StoredWeight[]? _gateUpViews, _gateViews, _upViews, _downViews;
    private (IntPtr Gate, IntPtr Up, IntPtr Down) _viewsOf;
    private readonly object _viewsGate = new();

    /// <summary>The experts' gate activation.</summary>
    public GatedActivation Activation { get; }

    /// <summary>Creates uninitialised stacks for <paramref name="experts"/> experts of <paramref name="size"/> neurons in <paramref name="precision"/> (fp32 when null).</summary>
    public StackedExperts(int experts, int size, int hidden, Precision? precision = null, GatedActivation activation = GatedActivation.Silu) : base(nameof(StackedExperts))
    {
        Activation = activation;
        var p = precision ?? Precision.Fp32;
        _size = size;
        var block = StoredWeight.Allocate([experts, 2 * size, hidden], p.Weights.For(hidden, "the routed experts' W_gate|W_up"));
        _gateUpBlock = [block];
        var gate = block.Narrow(1, 0, size);
        var up = block.Narrow(1, size, size);
        gate_proj = StoredWeight.Field(gate.Values);
        up_proj = StoredWeight.Field(up.Values);
        (gate_proj_scale, up_proj_scale) = (gate.Scales, up.Scales);
        _blockOf = (gate_proj.Handle, up_proj.Handle);
        var down = StoredWeight.Allocate([experts, hidden, size], p.Weights.For(size, "the routed experts' W_down"));
        down_proj = StoredWeight.Field(down.Values);
        down_proj_scale = down.Scales;
        (_gateUpFormat, _downFormat) = (block.Format, down.Format);
        RegisterComponents();
    }

    /// <summary>W_gate of every expert [E, m, d] (values; int8 values for int8 weights).</summary>
    public Tensor Gate => gate_proj;
    /// <summary>W_up of every expert [E, m, d].</summary>
    public Tensor Up => up_proj;
    /// <summary>W_down of every expert [E, d, m].</summary>
    public Tensor Down => down_proj;

    /// <summary>The stacks in their storage format.</summary>
    internal StoredWeight StoredGate => new(gate_proj, gate_proj_scale, _gateUpFormat);
    /// <summary>W_up of every expert, stored.</summary>
    internal StoredWeight StoredUp => new(up_proj, up_proj_scale, _gateUpFormat);
    /// <summary>W_down of every expert, stored.</summary>
    internal StoredWeight StoredDown => new(down_proj, down_proj_scale, _downFormat);

    /// <summary>
    /// Whether inference fast paths may compute experts from the raw stacked weights
    /// (<see cref="AddExpertInto"/>) instead of <see cref="Expert"/>: true when the module is not in
    /// training mode. Anything that makes <see cref="Expert"/> differ from the raw weights (e.g.
    /// unmerged adapters) must make this false.
    /// </summary>
    public bool RawWeightsUsable => !training && Adapter is null;

    /// <summary>W_gate|W_up of every expert as one [E, 2m, d] block (expert j's rows contiguous) while both stacks still live in it, else null.</summary>
    internal StoredWeight? FusedGateUp => (gate_proj.Handle, up_proj.Handle) == _blockOf ? _gateUpBlock[0] : null;

    /// <summary>Optional low-rank terms on every expert's matrices (LoRA while fine-tuning); not part of the state dict.</summary>
    internal IExpertAdapter? Adapter { get; set; }

    /// <summary>Expert j on its tokens: x [n, d] -> W_down_j (SiLU(W_gate_j x) * (W_up_j x)) [n, d].</summary>
    public Tensor Expert(long j, Tensor x)
    {
        using var scope = NewDisposeScope();
        if (Adapter is { } lora) return AdaptedExpert(lora, j, x).MoveToOuterDisposeScope();
        var h = Activation.Apply(StoredGate.Select(j).Linear(x)) * StoredUp.Select(j).Linear(x);   // [n, m]
        return StoredDown.Select(j).Linear(h).MoveToOuterDisposeScope();                  // [n, d]
    }

    /// <summary>
    /// Inference fast path: y += g * E_j(x) in place, for x [n, d] and y [n, d], reading expert j's
    /// contiguous weight blocks through cached views (one product for W_gate|W_up, SiLU and the product in
    /// place; no gradient). Use only while <see cref="RawWeightsUsable"/>, after <see cref="PrepareRaw"/> in the same forward pass.
    /// </summary>
    internal void AddExpertInto(int j, Tensor x, Tensor y, double g)
    {
        using var h = Hidden(j, x);                                                // [n, m]
        using var e = _downViews![j].Linear(h);                                    // [n, d]
        using var gate = Scalars.Owned(g);
        y.add_(e, gate);                                                           // y += g E_j(x)
    }

    /// <summary>Inference fast path for many tokens: E_j(x) [n, d] from the cached views (no gradient; after <see cref="PrepareRaw"/>).</summary>
    internal Tensor ExpertRaw(int j, Tensor x)
    {
        using var h = Hidden(j, x);                                                // [n, m]
        return _downViews![j].Linear(h);                                           // [n, d]
    }

    /// <summary>SiLU(W_gate_j x) * (W_up_j x) [n, m] from the cached views.</summary>
    private Tensor Hidden(int j, Tensor x)
    {
        if (_gateUpViews is not null)
        {
            using var gu = _gateUpViews[j].Linear(x);                              // [n, 2m]
            using var u = gu.narrow(1, _size, _size);
            return Activation.ApplyInPlace(gu.narrow(1, 0, _size)).mul_(u);                         // a view of gu's first half
        }
        var h = _gateViews![j].Linear(x);                                          // [n, m]
        using var up = _upViews![j].Linear(x);                                     // [n, m]
        return Activation.ApplyInPlace(h).mul_(up);
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
        if (_downViews is not null && _viewsOf == current) return;
        DisposeViews();
        if (FusedGateUp is { } block)
            _gateUpViews = Views(block);             // [2m, d] each
        else
        {
            _gateViews = Views(StoredGate);          // [m, d] each
            _upViews = Views(StoredUp);              // [m, d] each
        }
        _downViews = Views(StoredDown);              // [d, m] each
        _viewsOf = current;
    }

    private static StoredWeight[] Views(StoredWeight stack)
    {
        using var scope = NewDisposeScope();
        var plain = new StoredWeight(stack.Values.detach(), stack.Scales, stack.Format);
        var views = new StoredWeight[stack.Values.shape[0]];
        for (long j = 0; j < views.Length; j++)
        {
            var v = plain.Select(j);
            views[j] = new StoredWeight(v.Values.DetachFromDisposeScope(), v.Scales?.DetachFromDisposeScope(), v.Format);
        }
        return views;
    }

    private void DisposeViews()
    {
        foreach (var views in new[] { _gateUpViews, _gateViews, _upViews, _downViews })
            if (views is not null)
                foreach (var v in views)
                {
                    v.Values.Dispose();
                    v.Scales?.Dispose();
                }
        _gateUpViews = _gateViews = _upViews = _downViews = null;
    }

    /// <summary>Frees the cached views with the weights.</summary>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            DisposeViews();
            _gateUpBlock[0].Values.Dispose();
            _gateUpBlock[0].Scales?.Dispose();
        }
        base.Dispose(disposing);
    }

    /// <summary>Expert j with each matrix W replaced by W + (low-rank term): same shapes as <see cref="Expert"/>.</summary>
    private Tensor AdaptedExpert(IExpertAdapter lora, long j, Tensor x)
    {
        var g = StoredGate.Select(j).Linear(x).add(lora.Delta(ExpertMatrix.Gate, j, x, training), Scalars.One);   // [n, m]
        var u = StoredUp.Select(j).Linear(x).add(lora.Delta(ExpertMatrix.Up, j, x, training), Scalars.One);       // [n, m]
        var h = Activation.Apply(g) * u;                                                                                   // [n, m]
        return StoredDown.Select(j).Linear(h).add(lora.Delta(ExpertMatrix.Down, j, h, training), Scalars.One);    // [n, d]
    }
}
