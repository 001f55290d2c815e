namespace CMoE.Modeling;

/// <summary>Placeholder replaced by the device/backend module.</summary>
internal static class TorchRuntimePlaceholder { }
