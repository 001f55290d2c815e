using System.Globalization;
using CMoE.Tests.Modeling;

namespace CMoE.Tests.Cli;

public class ScoreCliTests
{
    [Fact]
    public void ScoresATsvWithTheEmbeddedModelAndKeepsEveryInputColumn()
    {
        using var dir = new TempDir();
        File.WriteAllLines(dir["in.tsv"],
        [
            "Id\tBody",
            "1\tThe state of the union is strong.",
            "2\tWe must balance the budget.",
            "3\t",
        ]);
        var run = CliRunner.Run("score", "--model", TestPaths.EmbeddedModel, "--input", dir["in.tsv"], "--text-column", "Body",
            "--out", dir["out.tsv"], "--max-tokens", "32", "--threads", "1");
        run.ExitCode.Should().Be(0, run.StdErr);
        var lines = File.ReadAllLines(dir["out.tsv"]);
        lines.Should().HaveCount(4);
        var header = lines[0].Split('\t');
        header.Should().StartWith(["Id", "Body"]).And.Contain(["Perplexity", "LogLikelihood"]);
        int ppl = Array.IndexOf(header, "Perplexity"), ll = Array.IndexOf(header, "LogLikelihood");
        var first = lines[1].Split('\t');
        first[0].Should().Be("1");
        double.Parse(first[ppl], CultureInfo.InvariantCulture).Should().BeInRange(1, 8192);
        double.Parse(first[ll], CultureInfo.InvariantCulture).Should().BeNegative();
        lines[3].Split('\t')[ppl].Should().Be("NaN", "empty text scores NaN perplexity, as documented");
        Directory.GetFiles(dir.Path).Should().HaveCount(2, "no temporary file is left behind");
    }

    [Fact]
    public void MissingTextColumnFailsWithOneLineAndNoOutput()
    {
        using var dir = new TempDir();
        File.WriteAllLines(dir["in.tsv"], ["Id\tBody", "1\thello"]);
        var run = CliRunner.Run("score", "--model", TestPaths.EmbeddedModel, "--input", dir["in.tsv"], "--text-column", "Text", "--out", dir["out.tsv"]);
        run.ExitCode.Should().NotBe(0);
        run.StdErr.Should().Contain("Text");
        run.StdErr.Trim().Split('\n').Should().ContainSingle();
        File.Exists(dir["out.tsv"]).Should().BeFalse();
    }
}
