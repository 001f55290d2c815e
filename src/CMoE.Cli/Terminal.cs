using System.Text.Json;
using System.Text.Json.Nodes;

namespace CMoE.Cli;

/// <summary>Console output: a progress bar on stderr when it is a terminal, JSON on stdout.</summary>
internal static class Terminal
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static bool Interactive => !Console.IsErrorRedirected;

    /// <summary>A progress reporter drawing "label [#####     ] 42% extra" on stderr, or nothing when redirected.</summary>
    public static ProgressBar Progress(string label) => new(label, Interactive);

    public static void WriteJson(JsonObject obj) => Console.Out.WriteLine(obj.ToJsonString(Indented));

    public static void Info(string line) => Console.Error.WriteLine(line);
}

/// <summary>A one-line progress bar on stderr.</summary>
internal sealed class ProgressBar(string label, bool enabled) : IProgress<double>, IDisposable
{
    private int _lastPercent = -1;
    private string _suffix = "";

    public void Report(double fraction) => Report(fraction, null);

    public void Report(double fraction, string? suffix)
    {
        if (!enabled) return;
        if (suffix is not null) _suffix = suffix;
        int percent = (int)Math.Clamp(fraction * 100, 0, 100);
        if (percent == _lastPercent && suffix is null) return;
        _lastPercent = percent;
        int filled = percent * 30 / 100;
        Console.Error.Write($"\r{label} [{new string('#', filled)}{new string(' ', 30 - filled)}] {percent,3}% {_suffix}   ");
    }

    public void Dispose()
    {
        if (enabled && _lastPercent >= 0) Console.Error.WriteLine();
    }
}
