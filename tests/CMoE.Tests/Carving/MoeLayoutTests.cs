using CMoE.Carving;

namespace CMoE.Tests.Carving;

public class MoeLayoutTests
{
    private const string ExpectedForm = "S{shared}A{active}E{experts}, e.g. S2A2E16";

    [Theory]
    [InlineData("S2A2E16", 2, 2, 16)]
    [InlineData("s3a3e8", 3, 3, 8)]
    [InlineData("  S0A1E2 ", 0, 1, 2)]
    [InlineData("S1A7E8", 1, 7, 8)]
    public void ParsesValidLayouts(string text, int s, int a, int e)
    {
        var layout = MoeLayout.Parse(text);
        layout.Should().Be(new MoeLayout(s, a, e));
        layout.Routed.Should().Be(e - s);
        MoeLayout.Parse(layout.ToString()).Should().Be(layout);
    }

    [Fact]
    public void DerivedQuantitiesMatchThePaper()
    {
        var layout = MoeLayout.Parse("S2A2E16");
        layout.ToString().Should().Be("S2A2E16");
        layout.ActiveFraction.Should().Be(0.25);
        MoeLayout.Parse("S3A3E8").ActiveFraction.Should().Be(0.75);
        layout.ExpertSize(11008).Should().Be(688);
        layout.SharedSize(11008).Should().Be(2 * 688);
    }

    [Fact]
    public void RemainderGoesToTheSharedExpert()
    {
        var layout = MoeLayout.Parse("S2A2E16");
        layout.ExpertSize(1030).Should().Be(64);
        layout.SharedSize(1030).Should().Be(2 * 64 + 6);
        MoeLayout.Parse("S0A2E4").SharedSize(35).Should().Be(3);
        MoeLayout.Parse("S0A2E4").SharedSize(32).Should().Be(0);
    }

    [Theory]
    [InlineData("")]
    [InlineData("2A2E16")]
    [InlineData("S2A2")]
    [InlineData("S2A2E16x")]
    [InlineData("S-1A2E16")]
    [InlineData("S 2A2E16")]
    [InlineData("S99999999999A1E2")]
    [InlineData("E16A2S2")]
    public void MalformedTextNamesTheTextAndTheExpectedForm(string text)
    {
        var act = () => MoeLayout.Parse(text);
        act.Should().Throw<ArgumentException>()
            .Where(e => e.Message.Contains($"'{text}'") && e.Message.Contains(ExpectedForm));
    }

    [Theory]
    [InlineData("S2A0E16", "at least 1")]
    [InlineData("S8A9E16", "exceeds e = 16")]
    [InlineData("S16A1E16", "lower s or a")]
    [InlineData("S0A1E0", "at least 1")]
    public void InconsistentCountsAreRejected(string text, string fragment)
    {
        var act = () => MoeLayout.Parse(text);
        act.Should().Throw<ArgumentException>()
            .Where(e => e.Message.Contains(text) && e.Message.Contains(fragment));
    }

    [Fact]
    public void ValidateRejectsTooManyExpertsForTheWidth()
    {
        var act = () => MoeLayout.Parse("S2A2E16").Validate(10);
        act.Should().Throw<ArgumentException>()
            .Where(e => e.Message.Contains("S2A2E16") && e.Message.Contains("at least one neuron") &&
                        e.Message.Contains("Use at most 10 experts"));
    }

    [Fact]
    public void ValidateRejectsConstructedInconsistentLayouts()
    {
        var act = () => new MoeLayout(-1, 2, 8).Validate(64);
        act.Should().Throw<ArgumentException>().Where(e => e.Message.Contains("negative"));
        var tooMany = () => new MoeLayout(4, 5, 8).Validate(64);
        tooMany.Should().Throw<ArgumentException>().Where(e => e.Message.Contains("s + a = 9 exceeds e = 8"));
        var zeroWidth = () => new MoeLayout(0, 1, 2).ExpertSize(0);
        zeroWidth.Should().Throw<ArgumentException>().Where(e => e.Message.Contains("must be positive"));
    }

    [Fact]
    public void SmallestFittingWidthIsAccepted()
    {
        var layout = MoeLayout.Parse("S1A1E4");
        layout.Validate(4);
        layout.ExpertSize(4).Should().Be(1);
        layout.SharedSize(7).Should().Be(1 + 3);
    }
}
