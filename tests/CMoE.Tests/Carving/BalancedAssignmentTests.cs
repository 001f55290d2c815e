using CMoE.Carving;

namespace CMoE.Tests.Carving;

public class BalancedAssignmentTests
{
    public static TheoryData<int, int> SmallShapes() => new()
    {
        { 2, 2 }, { 4, 2 }, { 6, 2 }, { 8, 2 }, { 6, 3 }, { 9, 3 }, { 8, 4 }, { 4, 4 }, { 5, 1 },
    };

    [Theory]
    [MemberData(nameof(SmallShapes))]
    public void OptimalCostEqualsBruteForceOnRandomRealCosts(int n, int k)
    {
        for (int seed = 0; seed < 60; seed++)
        {
            var cost = RandomCosts(n, k, seed, c => c.NextDouble() * 10 - 3);
            CheckAgainstBruteForce(cost, n, k);
        }
    }

    [Theory]
    [MemberData(nameof(SmallShapes))]
    public void OptimalCostEqualsBruteForceWithManyTies(int n, int k)
    {
        for (int seed = 0; seed < 60; seed++)
        {
            var cost = RandomCosts(n, k, 1000 + seed, c => c.Next(0, 3));
            CheckAgainstBruteForce(cost, n, k);
        }
    }

    [Fact]
    public void AllEqualCostsGiveADeterministicBalancedAnswer()
    {
        var cost = new double[12 * 3];
        var first = BalancedAssignment.Solve(cost, 3);
        var second = BalancedAssignment.Solve((double[])cost.Clone(), 3);
        first.Groups.Should().Equal(second.Groups);
        first.Cost.Should().Be(0);
        CheckBalanced(first.Groups, 3);
    }

    [Fact]
    public void ItemsMoveBetweenGroupsWhenThatIsCheaper()
    {
        // Item 0 prefers group 0 slightly, item 1 needs group 0 badly: the optimum moves item 0 out.
        var cost = new double[,] { { 0, 1 }, { 0, 100 } };
        var result = BalancedAssignment.Solve(cost);
        result.Groups.Should().Equal(1, 0);
        result.Cost.Should().Be(1);
    }

    [Fact]
    public void PaperSizedInstanceCompletesBalanced()
    {
        const int n = 1008, k = 14;
        var cost = RandomCosts(n, k, 7, c => c.Next(0, 2000));
        var result = BalancedAssignment.Solve(cost, k);
        CheckBalanced(result.Groups, k);
        result.Cost.Should().Be(Enumerable.Range(0, n).Sum(i => cost[(i * k) + result.Groups[i]]));
        // Never worse than the greedy "seed order" assignment i -> i % k.
        result.Cost.Should().BeLessThanOrEqualTo(Enumerable.Range(0, n).Sum(i => cost[(i * k) + (i % k)]));
    }

    [Fact]
    public void RejectsUnbalancedOrNonFiniteInput()
    {
        var notDivisible = () => BalancedAssignment.Solve(new double[6 * 4], 4);
        notDivisible.Should().Throw<ArgumentException>().Where(e => e.Message.Contains("divisible"));
        var nan = () => BalancedAssignment.Solve(new[] { 0.0, double.NaN, 1, 2 }, 2);
        nan.Should().Throw<ArgumentException>().Where(e => e.Message.Contains("finite"));
    }

    private static void CheckAgainstBruteForce(double[] cost, int n, int k)
    {
        var result = BalancedAssignment.Solve(cost, k);
        CheckBalanced(result.Groups, k);
        double recomputed = Enumerable.Range(0, n).Sum(i => cost[(i * k) + result.Groups[i]]);
        result.Cost.Should().BeApproximately(recomputed, 1e-9);
        result.Cost.Should().BeApproximately(BruteForce(cost, n, k), 1e-9);
        BalancedAssignment.Solve((double[])cost.Clone(), k).Groups.Should().Equal(result.Groups, "the solver is deterministic");
    }

    private static double BruteForce(double[] cost, int n, int k)
    {
        int m = n / k;
        var count = new int[k];
        double best = double.PositiveInfinity;
        void Recurse(int i, double sum)
        {
            if (i == n)
            {
                best = Math.Min(best, sum);
                return;
            }
            for (int j = 0; j < k; j++)
            {
                if (count[j] == m) continue;
                count[j]++;
                Recurse(i + 1, sum + cost[(i * k) + j]);
                count[j]--;
            }
        }
        Recurse(0, 0);
        return best;
    }

    private static void CheckBalanced(int[] groups, int k)
    {
        int m = groups.Length / k;
        groups.Should().OnlyContain(g => g >= 0 && g < k);
        groups.GroupBy(g => g).Should().HaveCount(k).And.OnlyContain(g => g.Count() == m);
    }

    private static double[] RandomCosts(int n, int k, int seed, Func<Random, double> draw)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, n * k).Select(_ => draw(random)).ToArray();
    }
}
