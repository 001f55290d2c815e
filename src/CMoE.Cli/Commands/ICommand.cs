using System.CommandLine;

namespace CMoE.Cli.Commands;

/// <summary>One cmoe sub-command: its name, help text, typed options and what it runs.</summary>
internal interface ICommand
{
    /// <summary>The sub-command's name (<c>cmoe NAME</c>).</summary>
    string Name { get; }

    /// <summary>One line for 'cmoe --help'.</summary>
    string Summary { get; }

    /// <summary>What 'cmoe NAME --help' says below the summary: the contract of the command.</summary>
    string Details { get; }

    /// <summary>The options it accepts (System.CommandLine generates the help, suggestions and errors from them).</summary>
    IEnumerable<Option> Options { get; }

    /// <summary>Runs the command on a parse result without errors; returns the exit code.</summary>
    int Run(ParseResult line, CancellationToken cancel);
}
