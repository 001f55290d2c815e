using System.Globalization;
using System.Text.Json.Nodes;
using CMoE.Tests.Modeling;

namespace CMoE.Tests.Cli;

/// <summary>
/// <c>cmoe classify-train</c> and <c>cmoe classify</c> end to end on the embedded model: a two-word keyword task learnt
/// from 40 rows (labels given as text, columns by name and by index), predictions written with the labels' own values,
/// bad inputs fail early with one line, exit non-zero and leave no output.
/// </summary>
public class ClassifyCliTests
{
    private static IEnumerable<string> Rows(int count, int seed)
    {
        var rng = new Random(seed);
        string[] words = ["the meeting", "our budget", "the weather", "a new report", "the garden", "my order"];
        string[] days = ["monday", "friday", "today", "tomorrow"];
        for (int i = 0; i < count; i++)
        {
            bool spam = i % 2 == 0;
            string text = $"{words[rng.Next(words.Length)]} is on {days[rng.Next(days.Length)]}";
            yield return $"{i}\t{(spam ? "spam" : "ham")}\t{(spam ? text + ", win free money now" : text + ", see you there")}";
        }
    }

    [Fact]
    public void TrainsAZipAndClassifiesATsvWithTheLabelsOwnValues()
    {
        using var dir = new TempDir();
        File.WriteAllLines(dir["train.tsv"], ["Id\tKind\tBody", .. Rows(40, 1)]);
        File.WriteAllLines(dir["test.tsv"], ["Id\tBody", .. Rows(12, 2).Select(r => { var f = r.Split('\t'); return f[0] + "\t" + f[2]; })]);
        var run = CliRunner.Run("classify-train", "--model", TestPaths.EmbeddedModel, "--data", dir["train.tsv"], "--text-column", "2", "--label-column", "Kind",
            "--out", dir["cls.zip"], "--max-tokens", "16", "--batch", "8", "--epochs", "3", "--lr", "5e-3", "--lora-rank", "4", "--validation-fraction", "0",
            "--threads", "1", "--json");
        run.ExitCode.Should().Be(0, run.StdErr);
        var json = JsonNode.Parse(run.StdOut)!;
        json["classes"]!.GetValue<int>().Should().Be(2);
        json["steps"]!.GetValue<int>().Should().Be(15);
        File.Exists(dir["cls.zip"]).Should().BeTrue();
        File.Exists(dir["cls.zip.partial"]).Should().BeFalse();

        run = CliRunner.Run("classify", "--model", dir["cls.zip"], "--data", dir["test.tsv"], "--out", dir["pred.tsv"], "--threads", "1");
        run.ExitCode.Should().Be(0, run.StdErr);
        var lines = File.ReadAllLines(dir["pred.tsv"]);
        lines.Should().HaveCount(13);
        var header = lines[0].Split('\t');
        header.Should().StartWith(["Id", "Body"]).And.Contain(["PredictedLabel", "Score"]);
        int predicted = Array.IndexOf(header, "PredictedLabel"), score = Array.IndexOf(header, "Score");
        int correct = 0;
        for (int i = 1; i < lines.Length; i++)
        {
            var f = lines[i].Split('\t');
            f[predicted].Should().BeOneOf("spam", "ham");
            f[score].Split(' ').Select(v => double.Parse(v, CultureInfo.InvariantCulture)).Sum().Should().BeApproximately(1, 1e-5);
            if (f[predicted] == (f[1].Contains("free money") ? "spam" : "ham")) correct++;
        }
        correct.Should().BeGreaterThanOrEqualTo(11, "the keyword separates the classes");
        Directory.GetFiles(dir.Path).Should().HaveCount(4, "no temporary file is left behind");
    }

    [Fact]
    public void BadInputsFailEarlyWithOneLineAndNoOutput()
    {
        using var dir = new TempDir();
        File.WriteAllLines(dir["train.tsv"], ["Id\tKind\tBody", "1\tham\thello", "2\tham\tworld"]);
        var run = CliRunner.Run("classify-train", "--model", TestPaths.EmbeddedModel, "--data", dir["train.tsv"], "--text-column", "Body", "--label-column", "Kind", "--out", dir["a.zip"]);
        run.ExitCode.Should().Be(1);
        run.StdErr.Should().Contain("at least 2 classes");
        run.StdErr.Trim().Split('\n').Should().ContainSingle();

        run = CliRunner.Run("classify-train", "--model", TestPaths.EmbeddedModel, "--data", dir["train.tsv"], "--text-column", "Text", "--label-column", "Kind", "--out", dir["a.zip"]);
        run.ExitCode.Should().Be(1);
        run.StdErr.Should().Contain("--text-column 'Text'");

        run = CliRunner.Run("classify-train", "--model", dir["nope"], "--data", dir["train.tsv"], "--out", dir["a.zip"]);
        run.ExitCode.Should().Be(1);
        run.StdErr.Should().Contain("does not exist");

        run = CliRunner.Run("classify-train", "--model", TestPaths.EmbeddedModel, "--data", dir["train.tsv"], "--out", dir["a.zip"], "--epochs", "0");
        run.ExitCode.Should().Be(2);

        run = CliRunner.Run("classify", "--model", dir["missing.zip"], "--data", dir["train.tsv"], "--out", dir["p.tsv"]);
        run.ExitCode.Should().Be(1);
        run.StdErr.Should().Contain("does not exist");

        File.WriteAllText(dir["fake.zip"], "not a zip");
        run = CliRunner.Run("classify", "--model", dir["fake.zip"], "--data", dir["train.tsv"], "--out", dir["p.tsv"]);
        run.ExitCode.Should().Be(1);
        run.StdErr.Should().Contain("not a model zip");
        Directory.GetFiles(dir.Path).Select(Path.GetFileName).Should().BeEquivalentTo(["train.tsv", "fake.zip"]);
    }
}
