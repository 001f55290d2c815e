using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using CMoE.Cli.Commands;

namespace CMoE.Cli;

/// <summary>
/// The cmoe command line: System.CommandLine parses, prints --help, --version and suggestions for mistyped options, and
/// expands @response files. A wrong command line exits 2; every other error is one line on stderr with exit code 1
/// (--verbose adds the stack trace); Ctrl+C exits 130.
/// </summary>
internal static class CliApp
{
    /// <summary>Parses and runs one command line; returns the exit code.</summary>
    public static int Run(string[] args, CancellationToken cancel)
    {
        var root = Build(cancel);
        var result = root.Parse(args);
        // --help and --version win over errors (e.g. `cmoe carve --help` without the required options).
        bool wrong = result.Action is ParseErrorAction;
        if (result.Action is ParseErrorAction error) error.ShowHelp = false;   // the error and the suggestions, not a page of help
        // Errors and typo suggestions go to stderr, so stdout stays machine-readable (--json); help goes to stdout.
        var invocation = new InvocationConfiguration { EnableDefaultExceptionHandler = false, ProcessTerminationTimeout = null };
        if (wrong) invocation.Output = Console.Error;
        int code = result.Invoke(invocation);
        return wrong ? 2 : code;
    }

    private static RootCommand Build(CancellationToken cancel)
    {
        ICommand[] commands =
        [
            new EvalCommand(), new CarveCommand(), new BenchCommand(), new SweepCommand(),
            new FinetuneCommand(), new ScoreCommand(), new SynthCommand(), new ClassifyTrainCommand(), new ClassifyCommand(),
        ];
        var verbose = new Option<bool>("--verbose") { Description = "print the stack trace of an error", Recursive = true };
        var root = new RootCommand("cmoe: carve a dense LLaMA-family model into a Mixture-of-Experts (CMoE), evaluate, fine-tune, score, sweep and benchmark it.");
        root.Options.Add(verbose);
        var helpOption = root.Options.OfType<HelpOption>().Single();
        var details = new Dictionary<Command, string>();
        helpOption.Action = new HelpPage((HelpAction)helpOption.Action!, details);
        foreach (var command in commands)
        {
            var sub = new Command(command.Name, command.Summary);
            details[sub] = command.Details;
            foreach (var option in command.Options) sub.Options.Add(option);
            sub.SetAction(parse => Guard(command.Name, () => command.Run(parse, cancel), parse.GetValue(verbose)));
            root.Subcommands.Add(sub);
        }
        return root;
    }

    private static int Guard(string name, Func<int> run, bool verbose)
    {
        try
        {
            return run();
        }
        catch (UsageException e)
        {
            Console.Error.WriteLine($"cmoe {name}: {e.Message}");
            return 2;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine($"cmoe {name}: cancelled; no output was written");
            return 130;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine(verbose ? $"cmoe {name}: {e}" : $"cmoe {name}: {e.Message.ReplaceLineEndings(" ")}");
            return 1;
        }
    }

    /// <summary>--help: System.CommandLine's page, then the sub-command's contract (what it computes and writes) under "Details:".</summary>
    private sealed class HelpPage(HelpAction standard, IReadOnlyDictionary<Command, string> details) : SynchronousCommandLineAction
    {
        public override int Invoke(ParseResult parseResult)
        {
            int code = standard.Invoke(parseResult);
            if (details.TryGetValue(parseResult.CommandResult.Command, out var text))
            {
                var output = parseResult.InvocationConfiguration.Output;
                output.WriteLine("Details:");
                foreach (var line in text.Trim().Split('\n')) output.WriteLine("  " + line.TrimEnd());
                output.WriteLine();
            }
            return code;
        }
    }
}
