namespace CMoE.Tests;

/// <summary>Locates the repository and the optional <c>../shared</c> folder beside it.</summary>
internal static class TestPaths
{
    /// <summary>The repository root (the folder holding CMoE.MLNet.sln).</summary>
    public static string RepoRoot { get; } = FindRepoRoot();

    /// <summary><c>../shared</c> beside the repository, or null when it is absent.</summary>
    public static string? Shared
    {
        get
        {
            string dir = Environment.GetEnvironmentVariable("CMOE_SHARED_DIR")
                         ?? Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared"));
            return Directory.Exists(dir) ? dir : null;
        }
    }

    /// <summary>The message a test skips with when <c>../shared</c> is absent.</summary>
    public const string NoShared = "../shared (tinyref-llama goldens and corpora) is not beside the repository";

    /// <summary>The embedded default model vendored in the repository.</summary>
    public static string EmbeddedModel => Path.Combine(RepoRoot, "models", "tinyref-llama");

    /// <summary>A path under <c>../shared</c>; call only after checking <see cref="Shared"/>.</summary>
    public static string InShared(params string[] parts) => Path.Combine([Shared!, .. parts]);

    private static string FindRepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "CMoE.MLNet.sln")))
            dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("CMoE.MLNet.sln not found above the test binaries");
    }
}
