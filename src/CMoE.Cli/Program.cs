using CMoE.Cli;
using CMoE.Cli.Commands;

// cmoe: carve, evaluate, fine-tune, score, sweep and benchmark CMoE models.
// Every error is one line on stderr with a non-zero exit code; --verbose adds the stack trace.
var commands = new Dictionary<string, ICommand>(StringComparer.Ordinal)
{
    ["eval"] = new EvalCommand(),
    ["carve"] = new CarveCommand(),
    ["bench"] = new BenchCommand(),
    ["sweep"] = new SweepCommand(),
    ["finetune"] = new FinetuneCommand(),
    ["score"] = new ScoreCommand(),
    ["synth"] = new SynthCommand(),
};

if (args.Length == 0 || args[0] is "--help" or "-h" or "help")
{
    Console.WriteLine("usage: cmoe <command> [options]   (cmoe <command> --help for its options)");
    foreach (var (name, command) in commands) Console.WriteLine($"  {name,-9} {command.Summary}");
    return args.Length == 0 ? 2 : 0;
}
if (!commands.TryGetValue(args[0], out var chosen))
{
    Console.Error.WriteLine($"cmoe: unknown command '{args[0]}'; run 'cmoe --help'");
    return 2;
}
if (args.Skip(1).Any(a => a is "--help" or "-h"))
{
    Console.WriteLine(chosen.Usage);
    return 0;
}
bool verbose = args.Contains("--verbose");
using var cancel = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; cancel.Cancel(); };
try
{
    var line = new CommandLine(args[0], args.Skip(1), chosen.Flags);
    return chosen.Run(line, cancel.Token);
}
catch (UsageException e)
{
    Console.Error.WriteLine($"cmoe {args[0]}: {e.Message}");
    return 2;
}
catch (OperationCanceledException)
{
    Console.Error.WriteLine($"cmoe {args[0]}: cancelled; no output was written");
    return 130;
}
catch (Exception e)
{
    Console.Error.WriteLine(verbose ? $"cmoe {args[0]}: {e}" : $"cmoe {args[0]}: {e.Message.ReplaceLineEndings(" ")}");
    return 1;
}
