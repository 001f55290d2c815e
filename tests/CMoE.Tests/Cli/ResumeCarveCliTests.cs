using System.Diagnostics;
using System.Security.Cryptography;
using CMoE.Tests.Modeling;

namespace CMoE.Tests.Cli;

/// <summary>
/// <c>cmoe carve --streaming --resume</c>: a carve killed (SIGKILL) after a completed layer, or in the middle of one,
/// continues from its last completed layer to the bytes of an uninterrupted carve; a resume with other inputs is refused.
/// </summary>
public class ResumeCarveCliTests
{
    private const string Text = "We the people of the United States, in order to form a more perfect union, establish justice, " +
                                "insure domestic tranquility, provide for the common defence, promote the general welfare. ";

    private static string[] Carve(TempDir dir, string output, string layout = "S2A2E16", string seed = "0", string threads = "1") =>
        ["carve", "--model", TestPaths.EmbeddedModel, "--calibration", dir["text.txt"], "--layout", layout, "--samples", "3",
         "--seq-len", "32", "--seed", seed, "--threads", threads, "--streaming", "--out", dir[output]];

    private static Dictionary<string, string> Hashes(string folder) =>
        Directory.GetFiles(folder).ToDictionary(f => Path.GetFileName(f), f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))));

    /// <summary>Starts the CLI with the halt hook, waits until it halts at the hook, and kills it (SIGKILL).</summary>
    private static void RunAndKill(string[] args, int layers, bool beforeCommit)
    {
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "cmoe.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["OMP_NUM_THREADS"] = "1";
        psi.Environment["CMOE_TEST_HALT_AFTER_LAYER"] = layers.ToString();
        psi.Environment["CMOE_TEST_HALT_BEFORE_COMMIT"] = beforeCommit ? "1" : "0";
        using var p = Process.Start(psi)!;
        _ = p.StandardOutput.ReadToEndAsync();
        var halted = new TaskCompletionSource<string>();
        var lines = new List<string>();
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) { halted.TrySetResult(string.Join("\n", lines)); return; }
            lines.Add(e.Data);
            if (e.Data.StartsWith("halted after layer", StringComparison.Ordinal)) halted.TrySetResult(e.Data);
        };
        p.BeginErrorReadLine();
        bool stopped = halted.Task.Wait(TimeSpan.FromMinutes(3));
        p.Kill(entireProcessTree: true);
        p.WaitForExit();
        stopped.Should().BeTrue("the carve must reach the halt hook");
        halted.Task.Result.Should().StartWith($"halted after layer {layers}", "the carve must halt at the hook, not fail");
    }

    [Fact]
    public void AKilledStreamingCarveResumesToTheBytesOfAnUninterruptedOne()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["text.txt"], string.Concat(Enumerable.Repeat(Text, 40)));
        var whole = CliRunner.Run(Carve(dir, "whole"));
        whole.ExitCode.Should().Be(0, whole.StdErr);
        var expected = Hashes(dir["whole"]);
        expected.Keys.Should().Contain(["config.json", "model.safetensors", "tokenizer.model"]);
        Directory.Exists(dir["whole.partial"]).Should().BeFalse("a finished carve removes its staging folder");

        // Killed after layer 3's commit: resume continues at layer 3.
        RunAndKill(Carve(dir, "killed"), layers: 3, beforeCommit: false);
        Directory.Exists(dir["killed"]).Should().BeFalse("nothing is promoted before the last layer");
        File.Exists(dir["killed.partial/manifest.json"]).Should().BeTrue();
        var refused = CliRunner.Run(Carve(dir, "killed"));
        refused.ExitCode.Should().NotBe(0, "an interrupted carve is not silently thrown away");
        refused.StdErr.Should().Contain("--resume").And.Contain("killed.partial");
        var resumed = CliRunner.Run([.. Carve(dir, "killed"), "--resume", "--json"]);
        resumed.ExitCode.Should().Be(0, resumed.StdErr);
        System.Text.Json.Nodes.JsonNode.Parse(resumed.StdOut)!["resumed"]!.GetValue<bool>().Should().BeTrue();
        System.Text.Json.Nodes.JsonNode.Parse(resumed.StdOut)!["layers"]!.AsArray().Should().HaveCount(8, "the report covers every layer");
        Hashes(dir["killed"]).Should().Equal(expected, "every output file is byte-identical to the uninterrupted carve");
        Directory.Exists(dir["killed.partial"]).Should().BeFalse();

        // Killed after writing layer 6's tensors but before its commit: the tail is cut off and layer 6 is carved again.
        RunAndKill(Carve(dir, "torn"), layers: 6, beforeCommit: true);
        new FileInfo(dir["torn.partial/model.safetensors.partial"]).Length.Should().BeGreaterThan(0);
        var again = CliRunner.Run([.. Carve(dir, "torn"), "--resume"]);
        again.ExitCode.Should().Be(0, again.StdErr);
        Hashes(dir["torn"]).Should().Equal(expected);
        Directory.GetDirectories(dir.Path).Select(Path.GetFileName).Should().BeEquivalentTo(["whole", "killed", "torn"], "no staging or temporary folder is left");
    }

    [Fact]
    public void AResumeWithOtherInputsIsRefusedAndNamesTheDifference()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["text.txt"], string.Concat(Enumerable.Repeat(Text, 40)));
        RunAndKill(Carve(dir, "out"), layers: 1, beforeCommit: false);
        var manifest = File.ReadAllText(dir["out.partial/manifest.json"]);

        var layout = CliRunner.Run([.. Carve(dir, "out", layout: "S3A3E8"), "--resume"]);
        layout.ExitCode.Should().NotBe(0);
        layout.StdErr.Trim().Split('\n').Should().ContainSingle();
        layout.StdErr.Should().Contain("option layout = \"S2A2E16\" (this command: \"S3A3E8\")").And.Contain("same model, calibration and options")
            .And.Contain("without --resume");

        var threads = CliRunner.Run([.. Carve(dir, "out", threads: "2"), "--resume"]);
        threads.ExitCode.Should().NotBe(0);
        threads.StdErr.Should().Contain("option threads = 1 (this command: 2)");

        var seed = CliRunner.Run([.. Carve(dir, "out", seed: "7"), "--resume"]);
        seed.ExitCode.Should().NotBe(0);
        seed.StdErr.Should().Contain("calibration");

        File.WriteAllText(dir["text.txt"], string.Concat(Enumerable.Repeat(Text.ToUpperInvariant(), 40)));
        var text = CliRunner.Run([.. Carve(dir, "out"), "--resume"]);
        text.ExitCode.Should().NotBe(0);
        text.StdErr.Should().Contain("calibration windows' sha256");

        File.ReadAllText(dir["out.partial/manifest.json"]).Should().Be(manifest, "a refused resume leaves the interrupted carve as it was");
        Directory.Exists(dir["out"]).Should().BeFalse();

        var usage = CliRunner.Run("carve", "--model", TestPaths.EmbeddedModel, "--calibration", dir["text.txt"], "--layout", "S2A2E16", "--resume", "--out", dir["x"]);
        usage.ExitCode.Should().Be(2);
        usage.StdErr.Should().Contain("add --streaming");
    }
}
