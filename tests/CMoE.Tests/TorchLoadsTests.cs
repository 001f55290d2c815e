using TorchSharp;

namespace CMoE.Tests;

public class TorchLoadsTests
{
    [Fact]
    public void LibTorchLoadsAndComputes()
    {
        using var a = torch.ones(2, 3);
        using var b = torch.ones(3, 4);
        using var c = torch.matmul(a, b);
        c.sum().item<float>().Should().Be(24f);
    }
}
