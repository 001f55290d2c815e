using System.Text.Json.Nodes;
using CMoE.Tests.Modeling;

namespace CMoE.Tests.Cli;

public class FinetuneCliTests
{
    private const string Text = "The Congress shall have power to lay and collect taxes, duties, imposts and excises, to pay the debts " +
                                "and provide for the common defence and general welfare of the United States. ";

    [Fact]
    public void FinetuneWritesACarvedFolderAndLeavesTheInputUntouched()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["text.txt"], string.Concat(Enumerable.Repeat(Text, 40)));
        var carve = CliRunner.Run("carve", "--model", TestPaths.EmbeddedModel, "--calibration", dir["text.txt"], "--layout", "S2A2E16",
            "--samples", "2", "--seq-len", "64", "--threads", "1", "--out", dir["carved"]);
        carve.ExitCode.Should().Be(0, carve.StdErr);
        var before = File.ReadAllBytes(Path.Combine(dir["carved"], "model.safetensors"));

        var ft = CliRunner.Run("finetune", "--model", dir["carved"], "--data", dir["text.txt"], "--samples", "4", "--seq-len", "32",
            "--lr", "1e-3", "--threads", "1", "--out", dir["tuned"], "--json");
        ft.ExitCode.Should().Be(0, ft.StdErr);
        var report = JsonNode.Parse(ft.StdOut)!;
        foreach (var key in new[] { "seconds", "tokens_per_second", "final_loss", "device", "trainable_parameters" })
            report[key].Should().NotBeNull(key);
        report["trainable_parameters"]!.GetValue<long>().Should().BeGreaterThan(0);
        report["router_scale_grad_norm"]!.GetValue<double>().Should().BeGreaterThan(0);
        File.ReadAllBytes(Path.Combine(dir["carved"], "model.safetensors")).Should().Equal(before);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir["tuned"], "config.json")))!;
        config["cmoe"]!["carving"]!["finetune"]!["mode"]!.GetValue<string>().Should().Be("lora");

        var eval = CliRunner.Run("eval", "--model", dir["tuned"], "--text", dir["text.txt"], "--seq-len", "32", "--max-windows", "2", "--threads", "1", "--json");
        eval.ExitCode.Should().Be(0, eval.StdErr);

        // bf16 base weights: trains, and the output is merged into fp32 weights (same size as the fp32 run's).
        var bf16 = CliRunner.Run("finetune", "--model", dir["carved"], "--data", dir["text.txt"], "--samples", "4", "--seq-len", "32",
            "--lr", "1e-3", "--threads", "1", "--dtype", "bf16", "--out", dir["tuned-bf16"], "--json");
        bf16.ExitCode.Should().Be(0, bf16.StdErr);
        JsonNode.Parse(bf16.StdOut)!["options"]!["dtype"]!.GetValue<string>().Should().Be("bf16");
        new FileInfo(Path.Combine(dir["tuned-bf16"], "model.safetensors")).Length.Should().Be(new FileInfo(Path.Combine(dir["tuned"], "model.safetensors")).Length);

        var full = CliRunner.Run("finetune", "--model", dir["carved"], "--data", dir["text.txt"], "--mode", "full", "--dtype", "bf16", "--out", dir["x"]);
        full.ExitCode.Should().NotBe(0);
        full.StdErr.Should().Contain("--dtype fp32");
        Directory.Exists(dir["x"]).Should().BeFalse();
    }
}
