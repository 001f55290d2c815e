using CMoE.Modeling.Weights;
using static TorchSharp.torch;

namespace CMoE.Modeling.Kernels;

/// <summary>
/// A row-major [rows, cols] weight matrix in memory as the managed kernels read it: the values (fp32, bf16 or int8) and, for
/// int8, one fp32 scale per group of <see cref="Group"/> columns of each row. Valid while the tensors it was taken from live
/// (owners cache it per tensor handle, see <see cref="PerWeights{T}"/>).
/// </summary>
internal readonly unsafe struct MatrixView
{
    /// <summary>The first value.</summary>
    public readonly void* Values;
    /// <summary>The first scale (int8), else null.</summary>
    public readonly float* Scales;
    /// <summary>Rows (outputs) and columns (inputs).</summary>
    public readonly int Rows, Cols;
    /// <summary>int8: columns per scale; else 0.</summary>
    public readonly int Group;
    /// <summary>The storage format.</summary>
    public readonly WeightKind Kind;

    public MatrixView(void* values, float* scales, int rows, int cols, int group, WeightKind kind)
    {
        Values = values;
        Scales = scales;
        (Rows, Cols, Group, Kind) = (rows, cols, group, kind);
    }

    /// <summary>Bytes per value.</summary>
    public int ValueBytes => Kind switch { WeightKind.Fp32 => 4, WeightKind.Bf16 => 2, _ => 1 };

    /// <summary>Bytes of the whole matrix (values and scales): what one matrix-vector product reads.</summary>
    public long Bytes => (long)Rows * Cols * ValueBytes + (Scales is null ? 0 : 4L * Rows * (Cols / Group));

    /// <summary>Rows [start, start + count) as a matrix of their own.</summary>
    public MatrixView Slice(long start, int count) => new((byte*)Values + start * Cols * ValueBytes,
        Scales is null ? null : Scales + start * (Cols / Group), count, Cols, Group, Kind);

    /// <summary>
    /// A view of <paramref name="w"/> read as [rows, cols] with cols its last dimension (leading dimensions flattened into rows),
    /// or null when the kernels cannot read it: not on the CPU, not contiguous, or a format they do not implement.
    /// </summary>
    public static MatrixView? Of(StoredWeight w)
    {
        var v = w.Values;
        if (v.device_type != TorchSharp.DeviceType.CPU || !v.is_contiguous()) return null;
        if (w.Scales is { } s && (s.device_type != TorchSharp.DeviceType.CPU || !s.is_contiguous() || s.dtype != ScalarType.Float32)) return null;
        var kind = v.dtype switch
        {
            ScalarType.Float32 => WeightKind.Fp32,
            ScalarType.BFloat16 => WeightKind.Bf16,
            ScalarType.Int8 when w.Scales is not null => WeightKind.Int8,
            _ => (WeightKind?)null,
        };
        if (kind is null) return null;
        long cols = v.shape[^1], rows = v.numel() / Math.Max(cols, 1);
        if (rows > int.MaxValue || cols > int.MaxValue) return null;
        return new MatrixView(DecodeKernels.Address(v), w.Scales is null ? null : (float*)DecodeKernels.Address(w.Scales), (int)rows, (int)cols,
            w.Scales is null ? 0 : (int)(cols / w.Scales.shape[^1]), kind.Value);
    }
}
