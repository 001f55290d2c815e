using System.Globalization;
using System.Text.RegularExpressions;

namespace CMoE.Carving;

/// <summary>
/// An MoE layout "S{shared}A{active}E{experts}" (cmoe-method.md, Notation): the dense FFN of
/// <c>d_h</c> neurons is cut into <see cref="Experts"/> experts of <c>m = d_h / e</c> neurons;
/// <see cref="Shared"/> of them are always on, the other <see cref="Routed"/> are routed and
/// <see cref="Active"/> of those are selected per token.
/// </summary>
/// <remarks>
/// When <c>d_h</c> is not divisible by <c>e</c>, the remainder <c>r = d_h % e</c> is not dropped
/// (unlike the authors' code): those neurons join the shared expert, which then holds
/// <c>s * m + r</c> neurons (see <see cref="SharedSize"/>). With <c>s = 0</c> the shared expert
/// holds only the remainder (possibly nothing).
/// </remarks>
/// <param name="Shared">Number of shared (always active) experts, s &gt;= 0.</param>
/// <param name="Active">Number of routed experts selected per token, a &gt;= 1.</param>
/// <param name="Experts">Total number of experts, e, with s + a &lt;= e.</param>
public sealed partial record MoeLayout(int Shared, int Active, int Experts)
{
    private const string ExpectedForm = "S{shared}A{active}E{experts}, e.g. S2A2E16";

    /// <summary>Number of routed experts, <c>e - s</c>.</summary>
    public int Routed => Experts - Shared;

    /// <summary>Fraction of the FFN neurons active per token, <c>(s + a) / e</c> (ignoring the remainder).</summary>
    public double ActiveFraction => (double)(Shared + Active) / Experts;

    /// <summary>Parses a layout such as "S2A2E16" (case-insensitive, surrounding white space ignored).</summary>
    /// <param name="text">The layout text.</param>
    /// <returns>The layout; its counts are checked (see <see cref="Validate"/>), its fit to a model is not.</returns>
    /// <exception cref="ArgumentException">The text is not of the form S{shared}A{active}E{experts} or its counts are inconsistent.</exception>
    public static MoeLayout Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var match = LayoutPattern().Match(text);
        if (!match.Success ||
            !TryParseCount(match.Groups[1].Value, out int s) ||
            !TryParseCount(match.Groups[2].Value, out int a) ||
            !TryParseCount(match.Groups[3].Value, out int e))
        {
            throw new ArgumentException(
                $"Invalid MoE layout '{text}': expected the form {ExpectedForm}.", nameof(text));
        }

        var layout = new MoeLayout(s, a, e);
        string? problem = layout.CountProblem();
        if (problem is not null)
        {
            throw new ArgumentException($"Invalid MoE layout '{text}': {problem}", nameof(text));
        }
        return layout;
    }

    /// <summary>
    /// Checks that this layout can carve an FFN of <paramref name="intermediateSize"/> neurons:
    /// <c>s &gt;= 0</c>, <c>a &gt;= 1</c>, <c>s + a &lt;= e</c> (so <c>e - s &gt;= a</c>) and
    /// <c>m = d_h / e &gt;= 1</c>.
    /// </summary>
    /// <param name="intermediateSize">The FFN width d_h.</param>
    /// <exception cref="ArgumentException">The layout does not fit; the message names the problem and the fix.</exception>
    public void Validate(int intermediateSize)
    {
        string? problem = CountProblem();
        if (problem is not null)
        {
            throw new ArgumentException($"Invalid MoE layout '{this}': {problem}");
        }
        if (intermediateSize < 1)
        {
            throw new ArgumentException(
                $"Invalid FFN width {intermediateSize} for MoE layout '{this}': the intermediate size d_h must be positive.",
                nameof(intermediateSize));
        }
        if (intermediateSize < Experts)
        {
            throw new ArgumentException(
                $"Invalid MoE layout '{this}' for an FFN of {intermediateSize} neurons: each of the {Experts} experts " +
                $"needs at least one neuron (m = {intermediateSize} / {Experts} = 0). Use at most {intermediateSize} experts.",
                nameof(intermediateSize));
        }
    }

    /// <summary>Neurons per expert, <c>m = d_h / e</c> (integer division).</summary>
    /// <param name="intermediateSize">The FFN width d_h.</param>
    public int ExpertSize(int intermediateSize)
    {
        Validate(intermediateSize);
        return intermediateSize / Experts;
    }

    /// <summary>
    /// Neurons in the shared expert, <c>s * m + r</c> with <c>r = d_h % e</c>: the remainder neurons
    /// are given to the shared expert instead of being dropped.
    /// </summary>
    /// <param name="intermediateSize">The FFN width d_h.</param>
    public int SharedSize(int intermediateSize)
    {
        int m = ExpertSize(intermediateSize);
        return Shared * m + intermediateSize % Experts;
    }

    /// <summary>The canonical text form, e.g. "S2A2E16".</summary>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"S{Shared}A{Active}E{Experts}");

    private string? CountProblem()
    {
        if (Shared < 0)
        {
            return $"the shared count s = {Shared} is negative; use s >= 0 (form {ExpectedForm}).";
        }
        if (Active < 1)
        {
            return $"the active count a = {Active} must be at least 1; select at least one routed expert per token.";
        }
        if (Experts < 1)
        {
            return $"the expert count e = {Experts} must be at least 1.";
        }
        if (Shared + Active > Experts)
        {
            return $"s + a = {Shared + Active} exceeds e = {Experts}, so fewer than a = {Active} routed experts " +
                   $"remain (e - s = {Experts - Shared}); lower s or a, or raise e so that s + a <= e.";
        }
        return null;
    }

    private static bool TryParseCount(string digits, out int value) =>
        int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out value);

    [GeneratedRegex(@"^\s*S(\d+)A(\d+)E(\d+)\s*$", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
    private static partial Regex LayoutPattern();
}
