namespace CMoE.Carving;

/// <summary>
/// Exact solver of the balanced assignment problem (cmoe-method.md, section 3): n items, k groups,
/// cost c[i, j]; every group receives exactly m = n / k items; minimise the total cost.
/// </summary>
/// <remarks>
/// <para>
/// This is a transportation problem (k sinks of capacity m), solved as min-cost flow by successive
/// shortest paths. Items are inserted one at a time (in index order). Inserting item i augments along
/// a shortest path source -&gt; g1 -&gt; g2 -&gt; ... -&gt; gt where i joins g1, one item moves from each
/// g_r to g_{r+1}, and gt has a free slot. The graph has only the k group nodes: the edge a -&gt; b costs
/// min over items x in a of (c[x, b] - c[x, a]), cached per group and refreshed only for groups an
/// augmentation touched. Group potentials keep reduced edge costs non-negative, so each shortest path
/// is a Dijkstra over k nodes. After every insertion the partial assignment is optimal for the items
/// inserted so far (standard SSP invariant), so the final one is optimal: the same optimum as LAPJV on
/// the authors' n x n expansion, in O(n k^2 + n m k * path length) time instead of O(n^3).
/// </para>
/// <para>
/// Ties are broken deterministically: Dijkstra picks the lowest group index among equal labels,
/// the cheapest free group with the lowest index is the sink, and an edge uses the lowest item index
/// among equally cheap items. Integer-valued costs (as the partitioner produces) are handled exactly.
/// </para>
/// </remarks>
internal static class BalancedAssignment
{
    /// <summary>An optimal balanced assignment.</summary>
    /// <param name="Groups">Group of each item, [n], values in [0, k).</param>
    /// <param name="Cost">Total cost, sum over i of c[i, Groups[i]].</param>
    internal readonly record struct Result(int[] Groups, double Cost);

    /// <summary>Solves for a cost matrix given as a 2-D array [n, k].</summary>
    internal static Result Solve(double[,] cost)
    {
        int n = cost.GetLength(0), k = cost.GetLength(1);
        var flat = new double[n * k];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < k; j++)
            {
                flat[(i * k) + j] = cost[i, j];
            }
        }
        return Solve(flat, k);
    }

    /// <summary>Solves for a row-major cost matrix: <c>cost[i * k + j]</c> is the cost of item i in group j.</summary>
    /// <param name="cost">Row-major [n, k] costs, all finite.</param>
    /// <param name="k">Number of groups; must divide n.</param>
    internal static Result Solve(double[] cost, int k)
    {
        ArgumentNullException.ThrowIfNull(cost);
        if (k < 1 || cost.Length == 0 || cost.Length % k != 0)
        {
            throw new ArgumentException($"Cost must be a non-empty [n, k] matrix with k = {k} >= 1; got {cost.Length} values.", nameof(cost));
        }
        int n = cost.Length / k;
        if (n % k != 0)
        {
            throw new ArgumentException($"Balanced assignment needs n divisible by k; got n = {n}, k = {k}.", nameof(cost));
        }
        foreach (double c in cost)
        {
            if (!double.IsFinite(c))
            {
                throw new ArgumentException("Balanced assignment costs must be finite (no NaN or infinity).", nameof(cost));
            }
        }
        return new Solver(cost, n, k).Run();
    }

    private sealed class Solver
    {
        private readonly double[] _cost;      // [n, k] row-major
        private readonly int _n, _k, _m;
        private readonly int[] _group;        // [n], -1 while not inserted
        private readonly List<int>[] _members; // per group, item indices
        private readonly double[] _potential; // [k]
        private readonly double[] _edge;      // [k, k]: min over x in a of c[x, b] - c[x, a]
        private readonly int[] _edgeItem;     // [k, k]: the item achieving _edge (lowest index on ties)
        private readonly bool[] _dirty;       // groups whose cached edge row must be recomputed
        private readonly double[] _label;     // Dijkstra labels, reduced
        private readonly int[] _pred;         // Dijkstra predecessor group, -1 = the new item (source)
        private readonly bool[] _done;

        internal Solver(double[] cost, int n, int k)
        {
            _cost = cost;
            _n = n;
            _k = k;
            _m = n / k;
            _group = Enumerable.Repeat(-1, n).ToArray();
            _members = Enumerable.Range(0, k).Select(_ => new List<int>(_m)).ToArray();
            _potential = new double[k];
            _edge = new double[k * k];
            _edgeItem = new int[k * k];
            _dirty = Enumerable.Repeat(true, k).ToArray();
            _label = new double[k];
            _pred = new int[k];
            _done = new bool[k];
        }

        internal Result Run()
        {
            for (int item = 0; item < _n; item++)
            {
                Insert(item);
            }
            double total = 0;
            for (int i = 0; i < _n; i++)
            {
                total += _cost[(i * _k) + _group[i]];
            }
            return new Result(_group, total);
        }

        /// <summary>One successive-shortest-path augmentation bringing <paramref name="item"/> in.</summary>
        private void Insert(int item)
        {
            RefreshEdges();
            ShortestPaths(item);
            int sink = CheapestFreeGroup();
            for (int g = 0; g < _k; g++)
            {
                _potential[g] += _label[g];   // potential = true distance; keeps reduced costs >= 0
            }
            // Walk back from the sink: every group on the path passes one item on to the next.
            int to = sink;
            while (_pred[to] >= 0)
            {
                int from = _pred[to];
                Move(_edgeItem[(from * _k) + to], from, to);
                to = from;
            }
            _group[item] = to;
            _members[to].Add(item);
            _dirty[to] = true;
        }

        /// <summary>Dijkstra over the k groups from the new item, on reduced costs.</summary>
        private void ShortestPaths(int item)
        {
            int row = item * _k;
            for (int g = 0; g < _k; g++)
            {
                _label[g] = _cost[row + g] - _potential[g];
                _pred[g] = -1;
                _done[g] = false;
            }
            for (int step = 0; step < _k; step++)
            {
                int a = -1;
                for (int g = 0; g < _k; g++)
                {
                    if (!_done[g] && (a < 0 || _label[g] < _label[a]))
                    {
                        a = g;
                    }
                }
                _done[a] = true;
                if (_members[a].Count == 0)
                {
                    continue;   // no item can leave an empty group
                }
                for (int b = 0; b < _k; b++)
                {
                    if (_done[b])
                    {
                        continue;
                    }
                    double reduced = _edge[(a * _k) + b] + _potential[a] - _potential[b];
                    double candidate = _label[a] + reduced;
                    if (candidate < _label[b])
                    {
                        _label[b] = candidate;
                        _pred[b] = a;
                    }
                }
            }
        }

        /// <summary>The not-yet-full group at the smallest true distance (lowest index on ties).</summary>
        private int CheapestFreeGroup()
        {
            int best = -1;
            double bestDistance = double.PositiveInfinity;
            for (int g = 0; g < _k; g++)
            {
                if (_members[g].Count >= _m)
                {
                    continue;
                }
                double distance = _label[g] + _potential[g];
                if (best < 0 || distance < bestDistance)
                {
                    best = g;
                    bestDistance = distance;
                }
            }
            return best;
        }

        private void Move(int item, int from, int to)
        {
            _members[from].Remove(item);
            _members[to].Add(item);
            _group[item] = to;
            _dirty[from] = true;
            _dirty[to] = true;
        }

        /// <summary>Recomputes the cached cheapest move a -&gt; b for every group a touched since last time.</summary>
        private void RefreshEdges()
        {
            for (int a = 0; a < _k; a++)
            {
                if (!_dirty[a])
                {
                    continue;
                }
                _dirty[a] = false;
                int edgeRow = a * _k;
                for (int b = 0; b < _k; b++)
                {
                    _edge[edgeRow + b] = double.PositiveInfinity;
                    _edgeItem[edgeRow + b] = -1;
                }
                foreach (int x in _members[a])
                {
                    int row = x * _k;
                    double own = _cost[row + a];
                    for (int b = 0; b < _k; b++)
                    {
                        if (b == a)
                        {
                            continue;
                        }
                        double delta = _cost[row + b] - own;
                        int e = edgeRow + b;
                        if (delta < _edge[e] || (delta == _edge[e] && x < _edgeItem[e]))
                        {
                            _edge[e] = delta;
                            _edgeItem[e] = x;
                        }
                    }
                }
            }
        }
    }
}
