using System.Text.Json.Nodes;
using CMoE.Tests.Modeling;

namespace CMoE.Tests.Cli;

public class BenchCliTests
{
    private const string Text = "We must balance the budget and keep faith with those who served this nation in war and in peace. ";

    private static JsonNode Bench(TempDir dir, string weights)
    {
        var run = CliRunner.Run("bench", "--model", TestPaths.EmbeddedModel, "--carved", dir["carved"], "--weights", weights,
            "--prompt-tokens", "8", "--decode-tokens", "2", "--repeats", "1", "--ffn-tokens", "2", "--threads", "1", "--json");
        run.ExitCode.Should().Be(0, run.StdErr);
        return JsonNode.Parse(run.StdOut)!;
    }

    [Fact]
    public void BenchLoadsACarvedFolderStraightIntoTheRequestedWeights()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["text.txt"], string.Concat(Enumerable.Repeat(Text, 40)));
        var carve = CliRunner.Run("carve", "--model", TestPaths.EmbeddedModel, "--calibration", dir["text.txt"], "--layout", "S2A2E16",
            "--samples", "2", "--seq-len", "64", "--threads", "1", "--out", dir["carved"]);
        carve.ExitCode.Should().Be(0, carve.StdErr);

        var fp32 = Bench(dir, "fp32")["model"]!;
        var int8 = Bench(dir, "int8");
        var model = int8["model"]!;
        model["weights"]!.GetValue<string>().Should().StartWith("int8");
        model["layout"]!.GetValue<string>().Should().Be("S2A2E16");
        long dense = model["dense_weight_bytes_per_token"]!.GetValue<long>(), carved = model["carved_weight_bytes_per_token"]!.GetValue<long>();
        carved.Should().BeLessThan(dense, "the carved model reads a quarter of the FFN");
        // int8 with fp32 scales per group reads a little over a quarter of the fp32 bytes, for both models.
        ((double)dense / fp32["dense_weight_bytes_per_token"]!.GetValue<long>()).Should().BeInRange(0.25, 0.30);
        ((double)carved / fp32["carved_weight_bytes_per_token"]!.GetValue<long>()).Should().BeInRange(0.25, 0.30);
        int8["carved"]!["decode_tokens_per_s"]!.GetValue<double>().Should().BePositive();
    }
}
