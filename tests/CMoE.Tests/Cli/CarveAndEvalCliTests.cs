using System.Text.Json.Nodes;
using CMoE.Tests.Modeling;

namespace CMoE.Tests.Cli;

public class CarveAndEvalCliTests
{
    private const string Text = "The Congress shall have power to lay and collect taxes, duties, imposts and excises, to pay the debts " +
                                "and provide for the common defence and general welfare of the United States. ";

    [Fact]
    public void CarveThenEvalOnTheEmbeddedModel()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["text.txt"], string.Concat(Enumerable.Repeat(Text, 40)));
        var carve = CliRunner.Run("carve", "--model", TestPaths.EmbeddedModel, "--calibration", dir["text.txt"], "--layout", "S2A2E16",
            "--samples", "2", "--seq-len", "64", "--threads", "1", "--out", dir["carved"], "--json");
        carve.ExitCode.Should().Be(0, carve.StdErr);
        var report = JsonNode.Parse(carve.StdOut)!;
        report["layout"]!.GetValue<string>().Should().Be("S2A2E16");
        report["active_ffn_fraction"]!.GetValue<double>().Should().Be(0.25);
        report["layers"]!.AsArray().Should().HaveCount(8);

        var eval = CliRunner.Run("eval", "--model", dir["carved"], "--text", dir["text.txt"], "--seq-len", "64", "--max-windows", "4", "--threads", "1", "--json");
        eval.ExitCode.Should().Be(0, eval.StdErr);
        var result = JsonNode.Parse(eval.StdOut)!;
        result["windows"]!.GetValue<int>().Should().Be(4);
        result["tokens"]!.GetValue<long>().Should().Be(4 * 63);
        result["perplexity"]!.GetValue<double>().Should().BeInRange(1, 8192);
        result["threads"]!.GetValue<int>().Should().Be(1);
    }

    [Fact]
    public void CarveWritesTheRequestedWeightFormatAndStreamingRefusesIt()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["text.txt"], string.Concat(Enumerable.Repeat(Text, 40)));
        var carve = CliRunner.Run("carve", "--model", TestPaths.EmbeddedModel, "--calibration", dir["text.txt"], "--layout", "S2A2E16",
            "--samples", "2", "--seq-len", "64", "--threads", "1", "--weights", "int8", "--out", dir["carved"], "--json");
        carve.ExitCode.Should().Be(0, carve.StdErr);
        JsonNode.Parse(carve.StdOut)!["weights"]!.GetValue<string>().Should().Be("int8");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir["carved"], "config.json")))!;
        config["cmoe"]!["version"]!.GetValue<int>().Should().Be(2);
        config["cmoe"]!["weights"]!.GetValue<string>().Should().Be("int8");
        var eval = CliRunner.Run("eval", "--model", dir["carved"], "--text", dir["text.txt"], "--seq-len", "64", "--max-windows", "2", "--threads", "1", "--json");
        eval.ExitCode.Should().Be(0, eval.StdErr);
        JsonNode.Parse(eval.StdOut)!["weights"]!.GetValue<string>().Should().Be("int8", "a carved folder loads in the format it records");

        var streaming = CliRunner.Run("carve", "--model", TestPaths.EmbeddedModel, "--calibration", dir["text.txt"], "--layout", "S2A2E16",
            "--samples", "2", "--seq-len", "64", "--streaming", "--weights", "bf16", "--out", dir["streamed"]);
        streaming.ExitCode.Should().NotBe(0);
        streaming.StdErr.Should().Contain("--streaming writes fp32");
        Directory.Exists(dir["streamed"]).Should().BeFalse();
    }

    [Theory]
    [InlineData("S2A2E2048", "at least one neuron")]
    [InlineData("S9A9E8", "S9A9E8")]
    [InlineData("2A2E16", "S{shared}A{active}E{experts}")]
    public void BadLayoutFailsEarlyWithOneLineAndNoOutput(string layout, string mentioned)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["text.txt"], Text);
        var run = CliRunner.Run("carve", "--model", TestPaths.EmbeddedModel, "--calibration", dir["text.txt"], "--layout", layout, "--out", dir["carved"]);
        run.ExitCode.Should().NotBe(0);
        run.StdErr.Trim().Split('\n').Should().ContainSingle();
        run.StdErr.Should().Contain(mentioned);
        Directory.Exists(dir["carved"]).Should().BeFalse();
        Directory.GetDirectories(dir.Path).Should().BeEmpty();
    }

    [Fact]
    public void MissingFilesAndEmptyTextFailWithClearMessages()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["empty.txt"], "");
        var noModel = CliRunner.Run("eval", "--model", dir["nope"], "--text", dir["empty.txt"]);
        noModel.ExitCode.Should().NotBe(0);
        noModel.StdErr.Should().Contain("nope");
        var empty = CliRunner.Run("eval", "--model", TestPaths.EmbeddedModel, "--text", dir["empty.txt"]);
        empty.ExitCode.Should().NotBe(0);
        empty.StdErr.Should().Contain("empty");
        var unknown = CliRunner.Run("eval", "--model", TestPaths.EmbeddedModel, "--text", dir["empty.txt"], "--bogus", "1");
        unknown.ExitCode.Should().Be(2);
        unknown.StdErr.Should().Contain("--bogus");
    }
}
