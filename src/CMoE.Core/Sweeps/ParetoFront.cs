namespace CMoE.Sweeps;

/// <summary>Pareto-front helpers on plain numbers (no model, no torch): both coordinates are minimised.</summary>
public static class ParetoFront
{
    /// <summary>
    /// Marks the non-dominated points when both <c>Cost</c> and <c>Loss</c> are minimised: point i is on
    /// the front unless some other point j has <c>Cost_j &lt;= Cost_i</c> and <c>Loss_j &lt;= Loss_i</c>
    /// with at least one strict inequality. Exact duplicates are all kept. NaN points are never on the front.
    /// </summary>
    /// <param name="points">The points (e.g. cost = active FFN fraction, loss = perplexity).</param>
    /// <returns>One flag per point, in the same order.</returns>
    public static bool[] Mark(IReadOnlyList<(double Cost, double Loss)> points)
    {
        ArgumentNullException.ThrowIfNull(points);
        var onFront = new bool[points.Count];
        for (int i = 0; i < points.Count; i++)
        {
            var (ci, li) = points[i];
            if (double.IsNaN(ci) || double.IsNaN(li)) continue;
            bool dominated = false;
            for (int j = 0; j < points.Count && !dominated; j++)
            {
                if (j == i) continue;
                var (cj, lj) = points[j];
                dominated = cj <= ci && lj <= li && (cj < ci || lj < li);
            }
            onFront[i] = !dominated;
        }
        return onFront;
    }

    /// <summary>
    /// The knee of a front: after scaling both coordinates of the front points to [0, 1], the point
    /// farthest below the straight line joining the two extreme points (the best trade-off "elbow").
    /// With fewer than three points, the lowest-loss point.
    /// </summary>
    /// <param name="points">The points; only those flagged in <paramref name="onFront"/> are considered.</param>
    /// <param name="onFront">Flags from <see cref="Mark"/>.</param>
    /// <returns>The index of the knee point, or -1 when no point is on the front.</returns>
    public static int Knee(IReadOnlyList<(double Cost, double Loss)> points, IReadOnlyList<bool> onFront)
    {
        var front = Enumerable.Range(0, points.Count).Where(i => onFront[i]).OrderBy(i => points[i].Cost).ThenBy(i => points[i].Loss).ToList();
        if (front.Count == 0) return -1;
        if (front.Count < 3) return front.MinBy(i => points[i].Loss);
        double c0 = front.Min(i => points[i].Cost), c1 = front.Max(i => points[i].Cost);
        double l0 = front.Min(i => points[i].Loss), l1 = front.Max(i => points[i].Loss);
        double Scale(double v, double lo, double hi) => hi > lo ? (v - lo) / (hi - lo) : 0;
        var (ax, ay) = (Scale(points[front[0]].Cost, c0, c1), Scale(points[front[0]].Loss, l0, l1));
        var (bx, by) = (Scale(points[front[^1]].Cost, c0, c1), Scale(points[front[^1]].Loss, l0, l1));
        int best = front[0];
        double bestDistance = double.NegativeInfinity;
        foreach (int i in front)
        {
            double x = Scale(points[i].Cost, c0, c1), y = Scale(points[i].Loss, l0, l1);
            // Signed distance below the chord from the cheapest to the most expensive front point.
            double distance = ((bx - ax) * (y - ay) - (by - ay) * (x - ax)) * -1;
            if (distance > bestDistance) (best, bestDistance) = (i, distance);
        }
        return best;
    }
}
