using System.Reflection;
using CMoE.Tests.Modeling;

namespace CMoE.Tests.Cli;

/// <summary>The System.CommandLine surface of cmoe: generated help, --version, typo suggestions, range errors, response files.</summary>
public class CommandLineTests
{
    [Fact]
    public void HelpListsEveryCommandWithItsSummary()
    {
        var run = CliRunner.Run("--help");
        run.ExitCode.Should().Be(0, run.StdErr);
        foreach (string name in new[] { "eval", "carve", "bench", "sweep", "finetune", "score", "synth" })
            run.StdOut.Should().MatchRegex($@"\n  {name} +\S");
        run.StdOut.Should().Contain("carve a dense model into a Mixture-of-Experts").And.NotContain("Details:");
    }

    [Fact]
    public void CommandHelpShowsOptionsDefaultsAndTheContract()
    {
        var run = CliRunner.Run("carve", "--help");
        run.ExitCode.Should().Be(0, run.StdErr);
        run.StdOut.Should().Contain("--model <hf-folder> (REQUIRED)")
            .And.MatchRegex(@"--seq-len <N> +tokens per calibration window \[default: 512\]")
            .And.Contain("--score <cosine|raw>")
            .And.Contain("Details:").And.Contain("--resume to continue from the last completed layer");
    }

    [Fact]
    public void VersionIsThePackageVersion()
    {
        var run = CliRunner.Run("--version");
        run.ExitCode.Should().Be(0, run.StdErr);
        string expected = typeof(CMoE.Cli.CliApp).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()!.InformationalVersion;
        run.StdOut.Trim().Should().Be(expected).And.MatchRegex(@"^\d+\.\d+\.\d+");
    }

    [Fact]
    public void AMistypedOptionFailsWithASuggestionOnStderrAndNothingOnStdout()
    {
        var run = CliRunner.Run("eval", "--model", TestPaths.EmbeddedModel, "--text", "x.txt", "--seq-lenn", "64", "--json");
        run.ExitCode.Should().Be(2);
        run.StdOut.Should().BeEmpty("stdout carries only results (--json)");
        run.StdErr.Should().Contain("'--seq-lenn' was not matched").And.Contain("--seq-len");
    }

    [Fact]
    public void OutOfRangeAndUnknownValuesNameTheOptionAndTheValue()
    {
        var low = CliRunner.Run("eval", "--model", TestPaths.EmbeddedModel, "--text", "x.txt", "--seq-len", "1");
        low.ExitCode.Should().Be(2);
        low.StdErr.Should().Contain("--seq-len must be an integer >= 2 (got '1')");
        var choice = CliRunner.Run("carve", "--model", "m", "--calibration", "c", "--layout", "S2A2E16", "--out", "o", "--score", "dot");
        choice.ExitCode.Should().Be(2);
        choice.StdErr.Should().Contain("--score must be cosine or raw (got 'dot')");
        var missing = CliRunner.Run("eval", "--text", "x.txt");
        missing.ExitCode.Should().Be(2);
        missing.StdErr.Should().Contain("--model");
    }

    [Fact]
    public void AResponseFileSuppliesTheArguments()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["text.txt"], string.Concat(Enumerable.Repeat("The state of the union is strong. ", 40)));
        File.WriteAllLines(dir["eval.rsp"], ["eval", "--model", TestPaths.EmbeddedModel, "--text", dir["text.txt"], "--seq-len", "32", "--max-windows", "2", "--threads", "1", "--json"]);
        var run = CliRunner.Run("@" + dir["eval.rsp"]);
        run.ExitCode.Should().Be(0, run.StdErr);
        run.StdOut.Should().Contain("\"windows\": 2").And.Contain("\"seq_len\": 32");
    }
}
