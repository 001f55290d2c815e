using static TorchSharp.torch;

namespace CMoE.Modeling.Weights;

/// <summary>How the weight matrices of a model are stored.</summary>
public enum WeightKind
{
    /// <summary>32-bit floats (what training and carving use).</summary>
    Fp32,
    /// <summary>bfloat16: the upper half of an fp32, exact for bf16 checkpoints; half the bytes.</summary>
    Bf16,
    /// <summary>
    /// Weight-only symmetric int8: each output row is cut into groups of <see cref="WeightFormat.GroupSize"/> input columns,
    /// each group stores q = round(w / s) in [-127, 127] and one fp32 scale s = max|w| / 127 (like llama.cpp's Q8_0, whose
    /// groups are 32 with an fp16 scale); about a quarter of the fp32 bytes.
    /// </summary>
    Int8,
}

/// <summary>
/// The storage format of a model's weight matrices (every linear map: q/k/v/o, dense gate/up/down, shared and routed
/// experts, lm_head, and the embedding table), chosen in one place: the CLI's <c>--weights</c>, the ML.NET options'
/// <c>Weights</c>, or a carved folder's recorded format. Activations, norms, the router and accumulation stay fp32.
/// </summary>
/// <param name="Kind">fp32, bf16 or int8.</param>
/// <param name="GroupSize">int8 only: input columns per scale, 32, 64 or 128; 0 picks, per matrix, the largest of those that
/// divides its input width.</param>
public sealed record WeightFormat(WeightKind Kind, int GroupSize = 0)
{
    /// <summary>fp32 weights.</summary>
    public static readonly WeightFormat Fp32 = new(WeightKind.Fp32);
    /// <summary>bf16 weights.</summary>
    public static readonly WeightFormat Bf16 = new(WeightKind.Bf16);
    /// <summary>int8 weights, group size chosen per matrix.</summary>
    public static readonly WeightFormat Int8 = new(WeightKind.Int8);

    /// <summary>The int8 group sizes the kernels implement (multiples of the 32-byte vector they step by).</summary>
    public static readonly IReadOnlyList<int> GroupSizes = [128, 64, 32];

    /// <summary>The names <see cref="Parse"/> takes.</summary>
    public const string Names = "fp32, bf16, int8 (or int8:32, int8:64, int8:128 to fix the group size)";

    /// <summary>Parses <c>fp32</c>, <c>bf16</c>, <c>int8</c> or <c>int8:G</c>.</summary>
    /// <exception cref="ArgumentException">An unknown name or group size, with the accepted ones.</exception>
    public static WeightFormat Parse(string text)
    {
        string s = text.Trim().ToLowerInvariant();
        if (s is "fp32" or "float32" or "f32") return Fp32;
        if (s is "bf16" or "bfloat16") return Bf16;
        if (s == "int8") return Int8;
        if (s.StartsWith("int8:", StringComparison.Ordinal) && int.TryParse(s[5..], out int g))
        {
            if (!GroupSizes.Contains(g))
                throw new ArgumentException($"int8 group size {g} is not supported; use 32, 64 or 128 (or plain int8 to pick per matrix).");
            return new WeightFormat(WeightKind.Int8, g);
        }
        throw new ArgumentException($"Unknown weight format '{text}'. Use one of: {Names}.");
    }

    /// <summary>
    /// The format a matrix with <paramref name="inFeatures"/> input columns is actually stored in: int8 with its group size,
    /// or bf16 where no supported group size divides the width (e.g. a shared expert of 100 neurons); fp32 and bf16 as asked.
    /// </summary>
    /// <exception cref="ArgumentException">An explicit group size does not divide the width (names the fix).</exception>
    public WeightFormat For(long inFeatures, string what = "a weight matrix")
    {
        if (Kind != WeightKind.Int8) return this;
        if (GroupSize > 0)
        {
            if (inFeatures % GroupSize != 0)
                throw new ArgumentException($"int8 group size {GroupSize} does not divide {what}'s {inFeatures} input columns. Use plain int8 (a group size per matrix) or int8:32.");
            return this;
        }
        foreach (int g in GroupSizes)
            if (inFeatures % g == 0) return new WeightFormat(WeightKind.Int8, g);
        return Bf16;
    }

    /// <summary>The dtype of the stored values.</summary>
    public ScalarType ValueType => Kind switch { WeightKind.Fp32 => ScalarType.Float32, WeightKind.Bf16 => ScalarType.BFloat16, _ => ScalarType.Int8 };

    /// <summary>Bytes of a [rows, cols] matrix in this format (values and scales).</summary>
    public long Bytes(long rows, long cols) => For(cols) switch
    {
        { Kind: WeightKind.Fp32 } => 4 * rows * cols,
        { Kind: WeightKind.Bf16 } => 2 * rows * cols,
        var int8 => rows * cols + 4 * rows * (cols / int8.GroupSize),
    };

    /// <summary><c>fp32</c>, <c>bf16</c>, <c>int8</c> or <c>int8:G</c>.</summary>
    public override string ToString() => Kind switch
    {
        WeightKind.Fp32 => "fp32",
        WeightKind.Bf16 => "bf16",
        _ => GroupSize > 0 ? $"int8:{GroupSize}" : "int8",
    };
}
