using System.Buffers;
using CMoE.Modeling.Kernels;
using CMoE.Modeling.Weights;
using static TorchSharp.torch;

namespace CMoE.Modeling.MoE;

/// <summary>
/// The carved FFN of one token computed in managed code, straight from the weights' memory in any weight format: router
/// products G|U x, host top-a, then the shared expert's and each selected expert's W_gate|W_up rows as one matrix-vector
/// job split across the <see cref="WorkerPool"/>'s threads, SiLU-product, and W_down accumulated into the output with the
/// gates, split across the threads by output rows (every thread reads its rows of each selected expert's W_down). One call
/// replaces the ~20 small tensor operations of the tensor fast path, whose dispatch cost dominates a decode step of a small model.
/// </summary>
/// <remarks>
/// The views stay valid while the block holds the same tensors (<see cref="Sources"/>; a move to another device or
/// dtype replaces them). In-place updates (loading, LoRA merge, balancing-bias updates) keep the storage and are seen
/// at once. Immutable, so scoring threads can share it.
/// </remarks>
internal sealed unsafe class ManagedMoeDecoder
{
    private readonly MatrixView _router;        // [2E, d]: G rows, then U rows (fp32)
    private readonly float* _bias;              // [E]
    private readonly float* _scale;             // [E]
    private readonly MatrixView? _sharedGateUp; // [2S, d]
    private readonly MatrixView? _sharedDown;   // [d, S]
    private readonly MatrixView _expertGateUp;  // [E * 2m, d]
    private readonly MatrixView _expertDown;    // [E * d, m]
    private readonly int _d, _s, _e, _m;

    private ManagedMoeDecoder(MatrixView router, float* bias, float* scale, MatrixView? sharedGateUp, MatrixView? sharedDown,
        MatrixView expertGateUp, MatrixView expertDown, MoeShape shape)
    {
        _bias = bias;
        _scale = scale;
        (_router, _sharedGateUp, _sharedDown, _expertGateUp, _expertDown) = (router, sharedGateUp, sharedDown, expertGateUp, expertDown);
        (_d, _s, _e, _m) = (shape.Hidden, shape.SharedSize, shape.RoutedExperts, shape.ExpertSize);
    }

    /// <summary>
    /// The parameters and buffers a decoder for <paramref name="block"/> reads, in a fixed order: a decoder (or the finding that
    /// none applies) stays valid while the block holds these same tensors (see <see cref="PerWeights{T}"/>).
    /// </summary>
    public static Tensor[] Sources(MoeBlock block)
    {
        var r = block.Router;
        var x = block.Experts;
        var s = block.SharedExpert;
        return s is null
            ? [r.Gate, r.Up, r.Bias, r.Scale, x.Gate, x.Up, x.Down]
            : [r.Gate, r.Up, r.Bias, r.Scale, x.Gate, x.Up, x.Down, s.Gate.Weight, s.Up.Weight, s.Down.Weight];
    }

    /// <summary>A decoder for <paramref name="block"/>, or null when the kernels cannot read its weights (other devices, split blocks, a bf16 router).</summary>
    public static ManagedMoeDecoder? TryCreate(MoeBlock block)
    {
        var shared = block.SharedExpert;
        SwiGluMlp.DecodeViews? sharedViews = null;
        if (shared is not null && (sharedViews = shared.Decodable()) is null) return null;
        if (block.Router.FusedGateUp is not { } router || block.Experts.FusedGateUp is not { } experts) return null;
        if (!DecodeKernels.Readable(router.Values, block.Router.Bias, block.Router.Scale)) return null;
        if (MatrixView.Of(router) is not { } r || MatrixView.Of(experts) is not { } gu || MatrixView.Of(block.Experts.StoredDown) is not { } down) return null;
        return new ManagedMoeDecoder(r, DecodeKernels.Pointer(block.Router.Bias), DecodeKernels.Pointer(block.Router.Scale),
            sharedViews?.GateUp, sharedViews?.Down, gu, down, block.Shape);
    }

    /// <summary>
    /// y = E_shared(x) + sum over the top-<paramref name="active"/> experts of g_j E_j(x) for each of the rows of
    /// <paramref name="x"/> [n * d] into <paramref name="y"/> [n * d]. With a finite <paramref name="threshold"/> (dynamic-K) a
    /// token uses the experts with p + b &gt;= threshold, at most <paramref name="active"/>, so the count varies per token.
    /// Returns the routed experts used over all rows and the most one row used.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public (long Routed, int MaxPerToken) Forward(ReadOnlySpan<float> x, Span<float> y, int active, float threshold = float.NegativeInfinity)
    {
        long routed = 0;
        int most = 0;
        int d = _d, e = _e, m = _m, s = _s;
        int hidden = 2 * s + active * 2 * m;                                            // gate|up outputs of every block used
        int quantBytes = _expertGateUp.Kind == WeightKind.Int8 || _sharedGateUp?.Kind == WeightKind.Int8
            ? QuantizedVector.ScratchBytes(d) + (active + 1) * QuantizedVector.ScratchBytes(Math.Max(s, m)) : 0;
        float[] h = ArrayPool<float>.Shared.Rent(hidden);
        byte[] q = ArrayPool<byte>.Shared.Rent(Math.Max(quantBytes, 1));
        Span<float> r = stackalloc float[2 * e];
        Span<int> selected = stackalloc int[active];
        Span<double> gates = stackalloc double[active];
        var bias = new ReadOnlySpan<float>(_bias, e);
        var scale = new ReadOnlySpan<float>(_scale, e);
        Segment* segments = stackalloc Segment[active + 1];
        try
        {
            fixed (float* hp = h)
            fixed (byte* qp = q)
            {
                for (int t = 0; t < x.Length / d; t++)
                {
                    var xt = x.Slice(t * d, d);
                    MatVec.Run(_router, xt, r);                                                 // G x | U x
                    int used = TrainingFreeRouter.SelectOnHost(r[..e], r[e..], bias, scale, selected, gates, threshold);
                    routed += used;
                    most = Math.Max(most, used);
                    int count = 0;
                    float* next = hp;
                    if (_sharedGateUp is { } sgu)
                    {
                        segments[count++] = new Segment(sgu, _sharedDown!.Value, next, 1f);
                        next += 2 * s;
                    }
                    for (int k = 0; k < used; k++, next += 2 * m)
                        segments[count++] = new Segment(_expertGateUp.Slice((long)selected[k] * 2 * m, 2 * m),
                            _expertDown.Slice((long)selected[k] * d, d), next, (float)gates[k]);
                    fixed (float* xp = xt)
                    fixed (float* yp = y.Slice(t * d, d))
                    {
                        if (count == 0) y.Slice(t * d, d).Clear();                          // no shared expert and no routed one above tau
                        else Run(segments, count, xp, yp, qp);
                    }
                }
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(h);
            ArrayPool<byte>.Shared.Return(q);
        }
        return (routed, most);
    }

    /// <summary>One block of a token's FFN: its W_gate|W_up [2n, d] and W_down [d, n], its hidden outputs, its gate.</summary>
    private readonly struct Segment(MatrixView gateUp, MatrixView down, float* hidden, float gate)
    {
        public readonly MatrixView GateUp = gateUp, Down = down;
        public readonly float* Hidden = hidden;
        public readonly float Gate = gate;
        public readonly QuantizedVector HiddenQ = default;

        public Segment(in Segment s, QuantizedVector hq) : this(s.GateUp, s.Down, s.Hidden, s.Gate) => HiddenQ = hq;
    }

    private struct Job
    {
        public Segment* Segments;
        public int Count;
        public float* X;
        public QuantizedVector XQ;
        public float* Y;
    }

    /// <summary>y = sum over segments of gate * W_down (SiLU-product of W_gate|W_up x), the products split across the pool's threads.</summary>
    private void Run(Segment* segments, int count, float* x, float* y, byte* quant)
    {
        var job = new Job { Segments = segments, Count = count, X = x, Y = y };
        int rows = 0;
        for (int i = 0; i < count; i++) rows += segments[i].GateUp.Rows;
        if (segments[0].GateUp.Kind == WeightKind.Int8)
        {
            job.XQ = QuantizedVector.Quantize(x, _d, segments[0].GateUp.Group, quant);
            quant += QuantizedVector.ScratchBytes(_d);
        }
        long bytes = 0;
        for (int i = 0; i < count; i++) bytes += segments[i].GateUp.Bytes;
        WorkerPool.Shared.Run(&GateUpRows, &job, rows, granularity: 4, maxThreads: Shares(bytes));
        for (int i = 0; i < count; i++)                                                     // h = SiLU(gate) * up per block
        {
            int n = segments[i].Down.Cols;
            DecodeKernels.SiluProduct(new Span<float>(segments[i].Hidden, 2 * n), n);
            if (segments[i].Down.Kind == WeightKind.Int8)
            {
                segments[i] = new Segment(segments[i], QuantizedVector.Quantize(segments[i].Hidden, n, segments[i].Down.Group, quant));
                quant += QuantizedVector.ScratchBytes(n);
            }
        }
        bytes = 0;
        for (int i = 0; i < count; i++) bytes += segments[i].Down.Bytes;
        WorkerPool.Shared.Run(&DownRows, &job, _d, granularity: 4, maxThreads: Shares(bytes));
    }

    private static int Shares(long bytes) => (int)Math.Clamp(bytes / MatVec.BytesPerThread, 1, int.MaxValue);

    /// <summary>Rows [start, end) of the stacked W_gate|W_up outputs of all segments.</summary>
    private static void GateUpRows(void* args, int start, int end)
    {
        var job = (Job*)args;
        int offset = 0;
        for (int i = 0; i < job->Count && offset < end; i++)
        {
            ref readonly var seg = ref job->Segments[i];
            int rows = seg.GateUp.Rows, from = Math.Max(start, offset) - offset, to = Math.Min(end, offset + rows) - offset;
            if (from < to) RowsOf(seg.GateUp, from, to, job->X, job->XQ, seg.Hidden, false, 1f);
            offset += rows;
        }
    }

    /// <summary>Output rows [start, end): y = sum over segments of gate * W_down[rows] h.</summary>
    private static void DownRows(void* args, int start, int end)
    {
        var job = (Job*)args;
        for (int i = 0; i < job->Count; i++)
        {
            ref readonly var seg = ref job->Segments[i];
            if (i == 0 && seg.Gate == 1f) RowsOf(seg.Down, start, end, seg.Hidden, seg.HiddenQ, job->Y, false, 1f);
            else
            {
                if (i == 0) new Span<float>(job->Y + start, end - start).Clear();
                RowsOf(seg.Down, start, end, seg.Hidden, seg.HiddenQ, job->Y, true, seg.Gate);
            }
        }
    }

    private static void RowsOf(in MatrixView w, int start, int end, float* x, in QuantizedVector xq, float* y, bool accumulate, float scale)
    {
        switch (w.Kind)
        {
            case WeightKind.Fp32: Fp32Rows.Run((float*)w.Values, start, end, w.Cols, x, y, accumulate, scale); break;
            case WeightKind.Bf16: Bf16Rows.Run((ushort*)w.Values, start, end, w.Cols, x, y, accumulate, scale); break;
            default: Int8Rows.Run(w, start, end, xq, y, accumulate, scale); break;
        }
    }
}
