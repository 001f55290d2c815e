namespace CMoE.Samples;

/// <summary>Finds files of the repository (the embedded model, vendored data) from wherever a sample runs.</summary>
internal static class SamplePaths
{
    /// <summary>
    /// The first existing <paramref name="relative"/> path (e.g. "models/tinyref-llama") above the current directory
    /// or above the executable, so `dotnet run --project samples/X` and running the built binary both work.
    /// </summary>
    public static string Find(string relative)
    {
        foreach (string start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                string candidate = Path.Combine(dir.FullName, relative);
                if (File.Exists(candidate) || Directory.Exists(candidate)) return candidate;
            }
        }
        throw new FileNotFoundException(
            $"'{relative}' was not found above '{Directory.GetCurrentDirectory()}' or '{AppContext.BaseDirectory}'. Run the sample from inside the CMoE.MLNet repository.");
    }
}
