namespace CMoE.Tests;

/// <summary>A fact that needs <c>../shared</c>; it is skipped, with the reason, when that folder is absent.</summary>
public sealed class SharedFactAttribute : FactAttribute
{
    /// <summary>Creates the attribute and decides the skip.</summary>
    public SharedFactAttribute()
    {
        if (TestPaths.Shared is null) Skip = TestPaths.NoShared;
    }
}

/// <summary>A theory that needs <c>../shared</c>; skipped with the reason when that folder is absent.</summary>
public sealed class SharedTheoryAttribute : TheoryAttribute
{
    /// <summary>Creates the attribute and decides the skip.</summary>
    public SharedTheoryAttribute()
    {
        if (TestPaths.Shared is null) Skip = TestPaths.NoShared;
    }
}
