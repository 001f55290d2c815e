namespace CMoE.Cli.Commands;

/// <summary>One cmoe sub-command.</summary>
internal interface ICommand
{
    /// <summary>One line for 'cmoe --help'.</summary>
    string Summary { get; }

    /// <summary>The full usage text.</summary>
    string Usage { get; }

    /// <summary>Options that take no value.</summary>
    IReadOnlySet<string> Flags { get; }

    /// <summary>Runs the command; returns the exit code.</summary>
    int Run(CommandLine line, CancellationToken cancel);
}
