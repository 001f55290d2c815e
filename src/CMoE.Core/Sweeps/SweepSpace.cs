using CMoE.Carving;

namespace CMoE.Sweeps;

/// <summary>One point of a sweep's search space: a layout and the profiling knobs it is carved with.</summary>
/// <param name="Layout">The MoE layout.</param>
/// <param name="Score">The activation score the profile uses.</param>
/// <param name="KAct">K_a, markers per token.</param>
public sealed record SweepCandidate(MoeLayout Layout, ActivationScore Score = ActivationScore.Cosine, int KAct = ActivationMarkers.DefaultMarkersPerToken)
{
    /// <summary>"S2A2E16", followed by "/raw" and "/k20" when the score or K_a are not the defaults.</summary>
    public override string ToString() =>
        Layout + (Score == ActivationScore.Cosine ? "" : "/" + Score.ToString().ToLowerInvariant())
               + (KAct == ActivationMarkers.DefaultMarkersPerToken ? "" : $"/k{KAct}");
}

/// <summary>How trials are drawn from a <see cref="SweepSpace"/>.</summary>
public enum SearchStrategy
{
    /// <summary>Every candidate in order (layouts, then scores, then K_a), up to the trial budget.</summary>
    Grid = 0,

    /// <summary>Candidates in a seeded random order without repetition, up to the trial budget.</summary>
    Random = 1,
}

/// <summary>
/// The search space of a sweep: the cartesian product of layouts (e, s, a), activation scores and K_a values.
/// </summary>
public sealed class SweepSpace
{
    /// <summary>Creates a space; every list must be non-empty.</summary>
    /// <param name="layouts">Layouts to try.</param>
    /// <param name="scores">Activation scores (default: cosine only).</param>
    /// <param name="kActs">K_a values (default: 10 only).</param>
    public SweepSpace(IEnumerable<MoeLayout> layouts, IEnumerable<ActivationScore>? scores = null, IEnumerable<int>? kActs = null)
    {
        Layouts = layouts.Distinct().ToList();
        Scores = (scores ?? [ActivationScore.Cosine]).Distinct().ToList();
        KActs = (kActs ?? [ActivationMarkers.DefaultMarkersPerToken]).Distinct().ToList();
        if (Layouts.Count == 0) throw new ArgumentException("A sweep space needs at least one layout, e.g. S2A2E16.");
        if (Scores.Count == 0) throw new ArgumentException("A sweep space needs at least one activation score (cosine or raw).");
        if (KActs.Count == 0 || KActs.Any(k => k < 1)) throw new ArgumentException("A sweep space needs K_a values of at least 1.");
    }

    /// <summary>Layouts to try.</summary>
    public IReadOnlyList<MoeLayout> Layouts { get; }
    /// <summary>Activation scores to try.</summary>
    public IReadOnlyList<ActivationScore> Scores { get; }
    /// <summary>K_a values to try.</summary>
    public IReadOnlyList<int> KActs { get; }

    /// <summary>Parses layouts such as "S1A1E8,S2A2E16" (comma or space separated).</summary>
    public static SweepSpace Parse(string layouts, IEnumerable<ActivationScore>? scores = null, IEnumerable<int>? kActs = null) =>
        new(layouts.Split([',', ' ', ';'], StringSplitOptions.RemoveEmptyEntries).Select(MoeLayout.Parse), scores, kActs);

    /// <summary>
    /// A standard space for an FFN of width <paramref name="intermediateSize"/>: e in {8, 16, 32},
    /// s in {0, 1, 2, 3, 4, 6, 8}, a in {1, 2, 3, 4, 6, 8}, keeping layouts with s + a &lt;= e, m = d_h / e &gt;= 1
    /// and an active FFN fraction between 1/8 and 3/4.
    /// </summary>
    public static SweepSpace Standard(int intermediateSize, IEnumerable<ActivationScore>? scores = null, IEnumerable<int>? kActs = null)
    {
        var layouts = new List<MoeLayout>();
        foreach (int e in new[] { 8, 16, 32 })
            foreach (int s in new[] { 0, 1, 2, 3, 4, 6, 8 })
                foreach (int a in new[] { 1, 2, 3, 4, 6, 8 })
                {
                    var layout = new MoeLayout(s, a, e);
                    if (s + a <= e && intermediateSize >= e && layout.ActiveFraction >= 0.125 && layout.ActiveFraction <= 0.75)
                        layouts.Add(layout);
                }
        return new SweepSpace(layouts, scores, kActs);
    }

    /// <summary>Every candidate, layouts outermost.</summary>
    public IReadOnlyList<SweepCandidate> Candidates() =>
        (from l in Layouts from s in Scores from k in KActs select new SweepCandidate(l, s, k)).ToList();

    /// <summary>The candidates in the order a strategy visits them (all of them; the budget cuts the list).</summary>
    /// <param name="strategy">Grid (in order) or random (seeded shuffle).</param>
    /// <param name="seed">Seed of the random order.</param>
    public IReadOnlyList<SweepCandidate> Order(SearchStrategy strategy, int seed)
    {
        var all = Candidates().ToArray();
        if (strategy == SearchStrategy.Random) new Random(seed).Shuffle(all);
        return all;
    }

    /// <summary>Checks every layout and K_a against an FFN of <paramref name="intermediateSize"/> neurons.</summary>
    /// <exception cref="ArgumentException">A layout or K_a does not fit; the message names it.</exception>
    public void Validate(int intermediateSize)
    {
        foreach (var layout in Layouts) layout.Validate(intermediateSize);
        foreach (int k in KActs)
            if (k > intermediateSize)
                throw new ArgumentException($"K_a = {k} exceeds the FFN width {intermediateSize}; use K_a <= {intermediateSize}.");
    }
}
