using CMoE.Modeling.Kernels;
using CMoE.Modeling.Weights;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace CMoE.Modeling;

/// <summary>
/// Multi-head causal self-attention with rotary positions and grouped-query attention (GQA):
/// each group of num_heads / num_kv_heads query heads shares one key/value head. Family features read from the config:
/// per-head q/k RMSNorm before RoPE (Qwen3: <c>q_norm</c>, <c>k_norm</c>), and an eager path for a score scale other than
/// head_dim^-1/2, score soft-capping and sliding windows (Gemma-2, Phi-3), which the fused SDPA call cannot express.
/// </summary>
public sealed class LlamaAttention : nn.Module
{
    // Field names are the Hugging Face keys (self_attn.q_proj.weight, ...).
    private readonly Projection q_proj;
    private readonly Projection k_proj;
    private readonly Projection v_proj;
    private readonly Projection o_proj;
    private readonly RmsNorm? q_norm;       // [head_dim], Qwen3
    private readonly RmsNorm? k_norm;
    private readonly LlamaConfig _config;
    private readonly bool _eager;           // scale / soft-cap / sliding window: scores as explicit tensors
    private readonly int _heads, _kvHeads, _headDim;
    private readonly FusedWeights? _qkv;   // q_proj|k_proj|v_proj weights as one block (no q/k/v bias)
    private Tensor? _ropeSign;              // [head_dim]: -1 on the first half, +1 on the second
    private readonly object _ropeSignGate = new();

    /// <summary>Creates the attention block with uninitialised weights in <paramref name="precision"/> (fp32 when null).</summary>
    public LlamaAttention(LlamaConfig c, Precision? precision = null) : base(nameof(LlamaAttention))
    {
        var p = precision ?? Precision.Fp32;
        (_heads, _kvHeads, _headDim) = (c.NumHeads, c.NumKeyValueHeads, c.HeadDim);
        _config = c;
        _eager = c.AttentionSoftcap is not null || c.QueryPreAttnScalar is not null || c.SlidingLayers is not null;
        if (c.QkvBias)
        {
            q_proj = new Projection(c.HiddenSize, _heads * _headDim, c.QkvBias, p);
            k_proj = new Projection(c.HiddenSize, _kvHeads * _headDim, c.QkvBias, p);
            v_proj = new Projection(c.HiddenSize, _kvHeads * _headDim, c.QkvBias, p);
        }
        else
        {
            (_qkv, var parts) = FusedWeights.Allocate(c.HiddenSize, [_heads * _headDim, _kvHeads * _headDim, _kvHeads * _headDim], p.Weights);
            q_proj = new Projection(parts[0]);
            k_proj = new Projection(parts[1]);
            v_proj = new Projection(parts[2]);
            _qkv.Bind(q_proj.Weight, k_proj.Weight, v_proj.Weight);
        }
        o_proj = new Projection(_heads * _headDim, c.HiddenSize, c.OutputBias, p);
        if (c.QkNorm)
        {
            q_norm = new RmsNorm(_headDim, c.RmsNormEps, p.Compute, c.NormWeightOffset);
            k_norm = new RmsNorm(_headDim, c.RmsNormEps, p.Compute, c.NormWeightOffset);
        }
        RegisterComponents();
    }

    /// <summary>The per-head query and key norms (Qwen3), or null.</summary>
    public (RmsNorm Q, RmsNorm K)? QkNorms => q_norm is null ? null : (q_norm, k_norm!);

    /// <summary>The q, k, v, o projections (for LoRA and tests).</summary>
    public IReadOnlyList<Projection> Projections => [q_proj, k_proj, v_proj, o_proj];

    /// <summary>
    /// x [batch, seq, d] at positions [start, start + seq) -> [batch, seq, d]. With a cache, keys and
    /// values of earlier positions come from it and this step's are appended.
    /// </summary>
    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, KvCache? cache, int layer)
    {
        if (cache is not null && TryManagedDecode(x, cos, sin, cache, layer) is { } decoded) return decoded;
        using var scope = NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        Tensor q, k, v;
        if (RawQkv(x) is { } qkvWeight)
        {
            // Inference fast path: one product for q|k|v, the rotation applied to q and k together.
            var qkv = qkvWeight.Linear(x).view(b, t, _heads + 2 * _kvHeads, _headDim);             // [b, t, H + 2 KV, hd]
            var qk = q_norm is null ? qkv.narrow(2, 0, _heads + _kvHeads)
                : cat([q_norm.forward(qkv.narrow(2, 0, _heads)), k_norm!.forward(qkv.narrow(2, _heads, _kvHeads))], 2);   // [b, t, H + KV, hd]
            qk = RotaryEmbedding.ApplyHeadsLast(qk, cos, sin, RopeSign(x));                          // [b, t, H + KV, hd]
            q = qk.narrow(2, 0, _heads).transpose(1, 2);                                            // [b, H, t, hd]
            k = qk.narrow(2, _heads, _kvHeads).transpose(1, 2);                                     // [b, KV, t, hd]
            v = qkv.narrow(2, _heads + _kvHeads, _kvHeads).transpose(1, 2);                         // [b, KV, t, hd]
        }
        else
        {
            q = q_proj.forward(x).view(b, t, _heads, _headDim);                     // [b, t, H, hd]
            k = k_proj.forward(x).view(b, t, _kvHeads, _headDim);                   // [b, t, KV, hd]
            if (q_norm is not null) (q, k) = (q_norm.forward(q), k_norm!.forward(k));   // per-head RMSNorm before RoPE (Qwen3)
            q = q.transpose(1, 2);                                                  // [b, H, t, hd]
            k = k.transpose(1, 2);                                                  // [b, KV, t, hd]
            v = v_proj.forward(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);   // [b, KV, t, hd]
            q = RotaryEmbedding.Apply(q, cos, sin);
            k = RotaryEmbedding.Apply(k, cos, sin);
        }
        long past = cache?.Length ?? 0;
        if (cache is not null) (k, v) = cache.Append(layer, k, v);                  // [b, KV, past + t, hd]
        if (_eager)
        {
            var eager = EagerAttention(q, k, v, past, _config.WindowOf(layer));                               // [b, H, t, hd]
            return o_proj.forward(eager.transpose(1, 2).reshape(b, t, _heads * _headDim)).MoveToOuterDisposeScope();
        }
        if (t == 1 && past > 0 && _kvHeads != _heads)
        {
            // Decode step: the H/KV query heads of a group become G "positions" of one query against the
            // group's shared key/value head (no mask: one new token sees every cached position). Same
            // result as repeating k and v per query head, without copying the whole cache each step.
            var grouped = F.scaled_dot_product_attention(q.reshape(b, _kvHeads, _heads / _kvHeads, _headDim), k, v); // [b, KV, G, hd]
            return o_proj.forward(grouped.reshape(b, 1, _heads * _headDim)).MoveToOuterDisposeScope();            // [b, 1, d]
        }
        if (_kvHeads != _heads)
        {
            k = k.repeat_interleave(_heads / _kvHeads, dim: 1);                      // [b, H, s, hd]
            v = v.repeat_interleave(_heads / _kvHeads, dim: 1);
        }
        Tensor attn = past == 0
            ? F.scaled_dot_product_attention(q, k, v, is_casual: t > 1)
            : F.scaled_dot_product_attention(q, k, v, attn_mask: t > 1 ? OffsetCausalMask(t, past, x.device) : null);
        var merged = attn.transpose(1, 2).reshape(b, t, _heads * _headDim);          // [b, t, H*hd]
        return o_proj.forward(merged).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// softmax(softcap(q k^T * scale) + mask) v with the scores as tensors (Hugging Face's eager attention): scale
    /// query_pre_attn_scalar^-1/2 or head_dim^-1/2, cap * tanh(s / cap) when capped, a causal mask narrowed to the last
    /// <paramref name="window"/> positions on sliding layers. q [b, H, t, hd], k and v [b, KV, past + t, hd] -> [b, H, t, hd].
    /// </summary>
    private Tensor EagerAttention(Tensor q, Tensor k, Tensor v, long past, int? window)
    {
        using var scope = NewDisposeScope();
        if (_kvHeads != _heads)
        {
            k = k.repeat_interleave(_heads / _kvHeads, dim: 1);                      // [b, H, s, hd]
            v = v.repeat_interleave(_heads / _kvHeads, dim: 1);
        }
        var scores = matmul(q, k.transpose(2, 3)).mul_(Scalars.Of(_config.AttentionScale));                   // [b, H, t, s]
        if (_config.AttentionSoftcap is double cap) scores = scores.div_(Scalars.Of(cap)).tanh_().mul_(Scalars.Of(cap));
        using var visible = VisibleMask(q.shape[2], past, window, q.device);                                  // [t, s]
        scores = scores.masked_fill(visible.logical_not(), Scalars.NegativeInfinity);
        var probs = scores.softmax(-1, ScalarType.Float32).to(q.dtype);                                       // [b, H, t, s]
        return matmul(probs, v).MoveToOuterDisposeScope();                                                    // [b, H, t, hd]
    }

    /// <summary>Boolean [t, past + t]: query i (at position past + i) sees key j when j &lt;= past + i and, with a window, past + i - j &lt; window.</summary>
    private static Tensor VisibleMask(long t, long past, int? window, Device device)
    {
        using var scope = NewDisposeScope();
        var causal = ones([t, past + t], dtype: ScalarType.Bool, device: device).tril(past);
        if (window is int w) causal = causal.logical_and(ones([t, past + t], dtype: ScalarType.Bool, device: device).tril(past - w).logical_not());
        return causal.MoveToOuterDisposeScope();
    }

    private readonly PerWeights<DecodeViews> _decoder = new();

    /// <summary>The managed kernels' views of W_q|W_k|W_v [(H + 2 KV) hd, d] and W_o [d, H hd].</summary>
    internal sealed record DecodeViews(MatrixView Qkv, MatrixView O);

    /// <summary>The views the managed decode step reads, or null when it cannot (training, adapters, biases, other devices, the eager path's features).</summary>
    internal DecodeViews? Decodable()
    {
        if (_eager || (q_norm is not null && (!q_norm.Decodable || !k_norm!.Decodable))) return null;   // soft-cap, scale, window: tensor path
        if (o_proj.Bias is not null || !o_proj.RawWeightsUsable || _qkv is null || !q_proj.RawWeightsUsable || !k_proj.RawWeightsUsable || !v_proj.RawWeightsUsable)
            return null;
        if ((q_proj.Weight.requires_grad || o_proj.Weight.requires_grad) && is_grad_enabled()) return null;
        return _decoder.Get([q_proj.Weight, k_proj.Weight, v_proj.Weight, o_proj.Weight], () =>
            _qkv.TryGet([q_proj.Weight, k_proj.Weight, v_proj.Weight]) is { } qkv && MatrixView.Of(qkv) is { } q && MatrixView.Of(o_proj.Stored) is { } o
                ? new DecodeViews(q, o) : null);
    }

    /// <summary>
    /// Decode step for CPU inference with fp32 activations (one new position per sequence, at most
    /// <see cref="DecodeKernels.MaxTokens"/> sequences, a KV cache): the managed <see cref="Decode"/> into a fresh tensor;
    /// null where it does not apply (training, adapters, biases, other devices or dtypes, prefill).
    /// </summary>
    private Tensor? TryManagedDecode(Tensor x, Tensor cos, Tensor sin, KvCache cache, int layer)
    {
        if (x.dim() != 3 || x.shape[1] != 1 || Decodable() is not { } views) return null;
        if (!DecodeKernels.Qualifies(x, x.shape[2], DecodeKernels.MaxTokens) || !DecodeKernels.Readable(cos, sin) || cos.numel() != _headDim) return null;
        if (!cache.ManagedReadable) return null;
        var y = empty(x.shape, dtype: ScalarType.Float32);
        Decode(views, DecodeKernels.Floats(x), DecodeKernels.Floats(y), DecodeKernels.Floats(cos), DecodeKernels.Floats(sin), cache, layer);
        return y;
    }

    /// <summary>
    /// One decode step of <c>x.Length / d</c> sequences (row r of <paramref name="x"/> is sequence r's new token, at position
    /// <c>cache.Length</c>): q|k|v as one managed matrix-vector product, rotary on q and k (<paramref name="cos"/>,
    /// <paramref name="sin"/> [head_dim] of that position), k and v written into the cache, each query head against its KV
    /// head's cached positions, o_proj. The cache's length is not advanced (the model does that after all layers).
    /// </summary>
    internal unsafe void Decode(DecodeViews views, ReadOnlySpan<float> x, Span<float> y, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, KvCache cache, int layer)
    {
        int d = views.Qkv.Cols, rows = x.Length / d;
        cache.EnsureRoom(1);
        var (keys, values) = cache.Pointers(layer);
        int past = (int)cache.Length, hd = _headDim, heads = _heads, kv = _kvHeads;
        int width = (heads + 2 * kv) * hd;
        var job = new AttendJob
        {
            Keys = (float*)keys, Values = (float*)values, Capacity = cache.Capacity, Positions = past + 1,
            HeadDim = hd, Heads = heads, KvHeads = kv, Width = width, ScoreFloats = AttentionCore.ScratchFloats(heads / kv, past + 1),
        };
        int floats = rows * (width + heads * hd) + rows * kv * job.ScoreFloats;
        float[] scratch = System.Buffers.ArrayPool<float>.Shared.Rent(floats);
        try
        {
            fixed (float* sp = scratch)
            {
                var qkv = scratch.AsSpan(0, rows * width);                                    // per row: q heads | k heads | v heads
                var merged = scratch.AsSpan(rows * width, rows * heads * hd);                 // per row: attention output, heads side by side
                job.Qkv = sp;
                job.Merged = sp + rows * width;
                job.Scores = sp + rows * (width + heads * hd);
                for (int row = 0; row < rows; row++)
                {
                    var r = qkv.Slice(row * width, width);
                    MatVec.Run(views.Qkv, x.Slice(row * d, d), r);
                    if (q_norm is not null)                                                    // per-head RMSNorm before RoPE (Qwen3)
                    {
                        for (int h = 0; h < heads; h++) q_norm.Decode(r.Slice(h * hd, hd), r.Slice(h * hd, hd));
                        for (int h = heads; h < heads + kv; h++) k_norm!.Decode(r.Slice(h * hd, hd), r.Slice(h * hd, hd));
                    }
                    for (int h = 0; h < heads + kv; h++) DecodeKernels.Rotate(r.Slice(h * hd, hd), cos, sin);   // q and k
                    for (int g = 0; g < kv; g++)                                               // append k, v at position `past`
                    {
                        long at = ((row * kv + g) * job.Capacity + past) * hd;
                        r.Slice((heads + g) * hd, hd).CopyTo(new Span<float>(job.Keys + at, hd));
                        r.Slice((heads + kv + g) * hd, hd).CopyTo(new Span<float>(job.Values + at, hd));
                    }
                }
                long cachedBytes = (long)rows * kv * job.Positions * hd * 8;                  // K and V read by this step
                WorkerPool.Shared.Run(&Attend, &job, rows * kv, maxThreads: (int)Math.Clamp(cachedBytes / (32 * 1024), 1, int.MaxValue));
                for (int row = 0; row < rows; row++)
                    MatVec.Run(views.O, merged.Slice(row * heads * hd, heads * hd), y.Slice(row * views.O.Rows, views.O.Rows));
            }
        }
        finally
        {
            System.Buffers.ArrayPool<float>.Shared.Return(scratch);
        }
    }

    /// <summary>What the worker threads of one decode step's attention read and write.</summary>
    private unsafe struct AttendJob
    {
        public float* Keys, Values, Qkv, Merged, Scores;
        public long Capacity;
        public int Positions, HeadDim, Heads, KvHeads, Width, ScoreFloats;
    }

    /// <summary>Items [start, end) of (row, KV group) pairs: query heads g*G .. (g+1)*G - 1 of the row against KV head g.</summary>
    private static unsafe void Attend(void* args, int start, int end)
    {
        var job = (AttendJob*)args;
        int hd = job->HeadDim, kv = job->KvHeads, group = job->Heads / kv;
        for (int item = start; item < end; item++)
        {
            int row = item / kv, g = item % kv;
            long cached = (row * kv + g) * job->Capacity * hd;
            AttentionCore.Group(job->Qkv + (long)row * job->Width + g * group * hd, group, hd, job->Keys + cached, job->Values + cached,
                job->Positions, job->Merged + ((long)row * job->Heads + g * group) * hd, job->Scores + (long)item * job->ScoreFloats);
        }
    }

    /// <summary>The q|k|v weight block when the fused inference path applies to <paramref name="x"/>, else null.</summary>
    private StoredWeight? RawQkv(Tensor x)
    {
        if (_qkv is null || !q_proj.RawWeightsUsable || !k_proj.RawWeightsUsable || !v_proj.RawWeightsUsable) return null;
        if (!FusedWeights.NoGradNeeded(x, q_proj.Weight) || k_proj.Weight.requires_grad || v_proj.Weight.requires_grad) return null;
        return _qkv.TryGet([q_proj.Weight, k_proj.Weight, v_proj.Weight]);
    }

    /// <summary>The rotation's sign vector [head_dim] in x's dtype and device (cached).</summary>
    private Tensor RopeSign(Tensor x)
    {
        lock (_ropeSignGate)   // scoring threads share the model; the first forward of each races to build it
        {
            if (_ropeSign is null || _ropeSign.dtype != x.dtype || _ropeSign.device_type != x.device_type || _ropeSign.device_index != x.device_index)
            {
                _ropeSign?.Dispose();
                long half = _headDim / 2;
                using var scope = NewDisposeScope();
                _ropeSign = cat([full(half, Scalars.Of(-1.0), dtype: x.dtype, device: x.device), ones(half, dtype: x.dtype, device: x.device)]).DetachFromDisposeScope();
            }
            return _ropeSign;
        }
    }

    /// <summary>Frees the cached sign vector with the weights.</summary>
    protected override void Dispose(bool disposing)
    {
        if (disposing) _ropeSign?.Dispose();
        base.Dispose(disposing);
    }

    /// <summary>Boolean mask [t, past + t]: query i sees keys 0..past + i.</summary>
    private static Tensor OffsetCausalMask(long t, long past, Device device) =>
        ones([t, past + t], dtype: ScalarType.Bool, device: device).tril(past);
}
