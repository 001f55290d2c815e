using CMoE.MLNet.Persistence;

namespace CMoE.Tests.Persistence;

/// <summary>The exact Microsoft.ML pin: the loaded version is the supported one, and another version is refused by name.</summary>
public class MlNetVersionGuardTests
{
    [Fact]
    public void TheLoadedMicrosoftMlIsTheVersionTheBridgeWasBuiltFor()
    {
        MlNetVersionGuard.LoadedVersion.Should().Be(MlNetBridge.BuiltForMlNetVersion);
        MlNetVersionGuard.Describe(MlNetVersionGuard.LoadedVersion).Should().BeNull();
        var ensure = MlNetVersionGuard.EnsureSupported;
        ensure.Should().NotThrow();
    }

    [Theory]
    [InlineData("5.0.2")]
    [InlineData("4.0.3")]
    [InlineData("6.0.0-preview.1")]
    public void AnotherVersionIsRefusedWithBothVersionsAndTheFix(string loaded)
    {
        string message = MlNetVersionGuard.Describe(loaded)!;
        message.Should().Contain($"Microsoft.ML {loaded} is loaded")
            .And.Contain($"needs Microsoft.ML {MlNetBridge.BuiltForMlNetVersion} exactly")
            .And.Contain($"Version=\"[{MlNetBridge.BuiltForMlNetVersion}]\"");
    }
}
