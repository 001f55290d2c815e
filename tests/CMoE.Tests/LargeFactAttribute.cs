namespace CMoE.Tests;

/// <summary>
/// A fact that needs several GB of disk and memory (a tensor and a zip entry over 2 GB: 18-22 s each alone on 2 cores,
/// 28-36 s each beside the rest of the suite, over a minute together), so it runs only with <c>CMOE_LARGE_TESTS=1</c>, and
/// is skipped, with the reason, when the temporary folder's disk or the available memory is smaller than it needs.
/// </summary>
public sealed class LargeFactAttribute : FactAttribute
{
    /// <summary>The variable that turns the large tests on (1).</summary>
    public const string Variable = "CMOE_LARGE_TESTS";

    /// <summary>Decides the skip from the variable, free disk under the temp folder and available memory.</summary>
    public LargeFactAttribute(double diskGb, double memoryGb)
    {
        if (Environment.GetEnvironmentVariable(Variable) != "1")
        {
            Skip = $"a large test (over 2 GB of data, about 30 s; needs {diskGb} GB of disk and {memoryGb} GB of memory): set {Variable}=1 to run it";
            return;
        }
        double disk = new DriveInfo(Path.GetPathRoot(Path.GetFullPath(Path.GetTempPath()))!).AvailableFreeSpace / 1e9;
        double memory = AvailableMemoryGb();
        if (disk < diskGb) Skip = $"a large test: needs {diskGb} GB free under {Path.GetTempPath()}, has {disk:F1} GB";
        else if (memory < memoryGb) Skip = $"a large test: needs {memoryGb} GB of available memory, has {memory:F1} GB";
    }

    /// <summary>MemAvailable from /proc/meminfo on Linux; elsewhere what the GC says it may use.</summary>
    private static double AvailableMemoryGb()
    {
        if (File.Exists("/proc/meminfo"))
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024 / 1e9;
        return GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 1e9;
    }
}
