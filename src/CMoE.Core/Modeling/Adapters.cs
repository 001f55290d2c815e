using static TorchSharp.torch;

namespace CMoE.Modeling;

/// <summary>
/// An additive low-rank term on a <see cref="Projection"/> (LoRA): forward becomes x W^T (+ b) + Delta(x).
/// The adapter is not a registered sub-module, so it never appears in the model's state dict; its owner
/// (the trainer) keeps its tensors and device.
/// </summary>
internal interface IProjectionAdapter
{
    /// <summary>The low-rank term: x [..., in] -> [..., out] in x's dtype; <paramref name="training"/> enables dropout.</summary>
    Tensor Delta(Tensor x, bool training);
}

/// <summary>Which matrix of a routed expert an adapter term belongs to.</summary>
internal enum ExpertMatrix
{
    /// <summary>W_gate [m, d].</summary>
    Gate,
    /// <summary>W_up [m, d].</summary>
    Up,
    /// <summary>W_down [d, m].</summary>
    Down,
}

/// <summary>Additive low-rank terms on the stacked routed experts (batched: one [E, ...] tensor per matrix).</summary>
internal interface IExpertAdapter
{
    /// <summary>The term for expert <paramref name="expert"/>'s <paramref name="matrix"/>: x [n, in] -> [n, out].</summary>
    Tensor Delta(ExpertMatrix matrix, long expert, Tensor x, bool training);
}
