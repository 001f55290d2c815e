using System.Text.Json;
using System.Text.Json.Nodes;
using Spectre.Console;

namespace CMoE.Cli;

/// <summary>Console output: progress on stderr (Spectre.Console) when it is a terminal, results and JSON on stdout.</summary>
internal static class Terminal
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static bool Interactive => !Console.IsErrorRedirected;

    /// <summary>A progress bar with elapsed and remaining time on stderr, or nothing when stderr is redirected.</summary>
    public static ProgressBar Progress(string label) => new(label, Interactive);

    public static void WriteJson(JsonObject obj) => Console.Out.WriteLine(obj.ToJsonString(Indented));

    public static void Info(string line) => Console.Error.WriteLine(line);
}

/// <summary>One Spectre.Console progress task on stderr: "label extra  [bar]  42%  elapsed  remaining".</summary>
internal sealed class ProgressBar : IProgress<double>, IDisposable
{
    private readonly string _label;
    private readonly ProgressTask? _task;
    private readonly TaskCompletionSource _finished = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Task? _display;

    public ProgressBar(string label, bool enabled)
    {
        _label = label;
        if (!enabled) return;
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        var started = new TaskCompletionSource<ProgressTask>(TaskCreationOptions.RunContinuationsAsynchronously);
        _display = Task.Run(() => console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(),
                new ElapsedTimeColumn(), new RemainingTimeColumn())
            .StartAsync(async context =>
            {
                started.SetResult(context.AddTask(Markup.Escape(label), maxValue: 1.0));
                await _finished.Task;
            }));
        _task = started.Task.GetAwaiter().GetResult();
    }

    public void Report(double fraction) => Report(fraction, null);

    /// <summary>Sets the fraction done and, when given, the text after the label (e.g. "layer 3/8", "loss 3.21").</summary>
    public void Report(double fraction, string? suffix)
    {
        if (_task is null) return;
        _task.Value = Math.Clamp(fraction, 0, 1);
        if (suffix is not null) _task.Description = $"{Markup.Escape(_label)} [grey]{Markup.Escape(suffix)}[/]";
    }

    public void Dispose()
    {
        if (_display is null) return;
        _finished.TrySetResult();
        _display.GetAwaiter().GetResult();
    }
}
