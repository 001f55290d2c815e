using System.Diagnostics;
using CMoE.Modeling.IO;
using CMoE.Tests.Modeling;

namespace CMoE.Tests.Reliability;

/// <summary>An interrupted write (exception or killed process) leaves the previous output intact.</summary>
public class InterruptedWriteTests
{
    private static Dictionary<string, string> Snapshot(string folder) =>
        Directory.GetFiles(folder).ToDictionary(f => Path.GetFileName(f), f => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(f))));

    [Fact]
    public void AFailedWriteKeepsThePreviousFolder()
    {
        using var dir = new TempDir();
        AtomicFolder.Write(dir["out"], tmp => File.WriteAllText(Path.Combine(tmp, "a.txt"), "first"));
        var act = () => AtomicFolder.Write(dir["out"], tmp =>
        {
            File.WriteAllText(Path.Combine(tmp, "a.txt"), "second, half written");
            throw new IOException("disk full");
        });
        act.Should().Throw<IOException>();
        File.ReadAllText(dir["out/a.txt"]).Should().Be("first");
        Directory.GetDirectories(dir.Path).Should().ContainSingle();
    }

    [Fact]
    public void LeftoversOfAKilledWriteAreCleanedAndAnAsideCopyIsRestored()
    {
        using var dir = new TempDir();
        Directory.CreateDirectory(dir[".out.tmp-dead"]);
        Directory.CreateDirectory(dir[".out.old-dead"]);
        File.WriteAllText(dir[".out.old-dead/a.txt"], "previous");       // killed between the two moves
        AtomicFolder.Write(dir["other"], _ => { });
        AtomicFolder.Write(dir["out"], tmp => File.WriteAllText(Path.Combine(tmp, "b.txt"), "new"));
        Directory.GetDirectories(dir.Path).Select(Path.GetFileName).Should().BeEquivalentTo("out", "other");
        File.ReadAllText(dir["out/b.txt"]).Should().Be("new");
    }

    [Fact]
    public void KillingCarveMidWriteLeavesThePreviousCarvedFolderIntact()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["text.txt"], string.Concat(Enumerable.Repeat("We the people of the United States, in order to form a more perfect union. ", 60)));
        string[] carve = ["carve", "--model", TestPaths.EmbeddedModel, "--calibration", dir["text.txt"], "--layout", "S2A2E16",
            "--samples", "1", "--seq-len", "32", "--threads", "1", "--out", dir["carved"]];
        var first = Cli.CliRunner.Run(carve);
        first.ExitCode.Should().Be(0, first.StdErr);
        var before = Snapshot(dir["carved"]);

        bool killedMidWrite = false;
        for (int attempt = 0; attempt < 5 && !killedMidWrite; attempt++)
        {
            var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
            psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "cmoe.dll"));
            foreach (var a in carve.Select(a => a == "S2A2E16" ? "S3A3E8" : a)) psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            var clock = Stopwatch.StartNew();
            while (!p.HasExited && clock.Elapsed < TimeSpan.FromMinutes(2))
            {
                if (Directory.EnumerateDirectories(dir.Path, ".carved.tmp-*").Any(t => File.Exists(Path.Combine(t, "config.json"))))
                {
                    p.Kill(entireProcessTree: true);
                    killedMidWrite = true;
                    break;
                }
                Thread.Sleep(2);
            }
            p.WaitForExit();
        }
        killedMidWrite.Should().BeTrue("the test must catch the write in progress at least once");
        Snapshot(dir["carved"]).Should().BeEquivalentTo(before, "the previous output is untouched");
        var again = Cli.CliRunner.Run(carve);
        again.ExitCode.Should().Be(0, again.StdErr);
        Directory.GetDirectories(dir.Path).Select(Path.GetFileName).Should().BeEquivalentTo(["carved"], "the next write cleans the leftovers");
    }
}
