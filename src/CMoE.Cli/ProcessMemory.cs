namespace CMoE.Cli;

/// <summary>Peak resident memory of this process (Linux VmHWM), for the memory figures the commands report.</summary>
internal static class ProcessMemory
{
    /// <summary>Peak resident set size in MB, or -1 where /proc is not available.</summary>
    public static double PeakRssMb()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    return Math.Round(long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) / 1024.0, 1);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return -1;
    }
}
