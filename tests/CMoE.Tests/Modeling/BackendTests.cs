using CMoE.Modeling.Backend;

namespace CMoE.Tests.Modeling;

public class BackendTests
{
    [Fact]
    public void CudaFromAMissingLibTorchFolderFailsWithTheFix()
    {
        var act = () => TorchRuntime.Resolve(DeviceKind.Cuda, "/nonexistent/torch/lib");
        act.Should().Throw<InvalidOperationException>()
            .WithMessage("*CUDA was requested but cannot be initialised*'/nonexistent/torch/lib' does not exist*--device cpu*");
    }

    [Fact]
    public void CpuIsAlwaysAvailable()
    {
        TorchRuntime.Resolve(DeviceKind.Cpu).type.Should().Be(TorchSharp.DeviceType.CPU);
    }

    [Theory]
    [InlineData("auto", DeviceKind.Auto)]
    [InlineData("CPU", DeviceKind.Cpu)]
    [InlineData("cuda", DeviceKind.Cuda)]
    public void DeviceNamesParse(string text, DeviceKind kind) => TorchRuntime.ParseKind(text).Should().Be(kind);

    [Fact]
    public void UnknownDeviceNameIsRejected() =>
        ((Action)(() => TorchRuntime.ParseKind("tpu"))).Should().Throw<ArgumentException>().WithMessage("*'tpu'*auto, cpu or cuda*");
}
