namespace CMoE.Carving;

/// <summary>How a neuron's activation score is computed during profiling (cmoe-method.md, section 1).</summary>
public enum ActivationScore
{
    /// <summary>
    /// The authors' code (default): x, row i of W_gate and row i of W_up are L2-normalised,
    /// h~_i = SiLU(&lt;x^, g^_i&gt;) * &lt;x^, u^_i&gt;.
    /// </summary>
    Cosine = 0,

    /// <summary>The paper's text: the raw SwiGLU hidden value h_i = SiLU((W_gate x)_i) * (W_up x)_i.</summary>
    Raw = 1,
}
