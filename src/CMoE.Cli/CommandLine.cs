using System.Globalization;

namespace CMoE.Cli;

/// <summary>A parsed command line: <c>--name value</c> options and <c>--flag</c> switches, checked against what a command accepts.</summary>
internal sealed class CommandLine
{
    private readonly Dictionary<string, string?> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    public CommandLine(string command, IEnumerable<string> args, IReadOnlySet<string> flags)
    {
        Command = command;
        var list = args.ToList();
        for (int i = 0; i < list.Count; i++)
        {
            string a = list[i];
            if (!a.StartsWith("--", StringComparison.Ordinal) || a.Length == 2)
                throw new UsageException($"unexpected argument '{a}'; options look like --name value");
            string name = a[2..];
            string? value = null;
            int eq = name.IndexOf('=');
            if (eq >= 0) (name, value) = (name[..eq], name[(eq + 1)..]);
            else if (!flags.Contains(name))
            {
                if (i + 1 >= list.Count || list[i + 1].StartsWith("--", StringComparison.Ordinal))
                    throw new UsageException($"option --{name} needs a value");
                value = list[++i];
            }
            if (!_values.TryAdd(name, value)) throw new UsageException($"option --{name} is given twice");
        }
    }

    public string Command { get; }

    public bool Flag(string name)
    {
        _used.Add(name);
        return _values.ContainsKey(name);
    }

    public string? Optional(string name)
    {
        _used.Add(name);
        return _values.TryGetValue(name, out var v) ? v : null;
    }

    public string Required(string name, string what) =>
        Optional(name) ?? throw new UsageException($"{Command} needs --{name} <{what}>");

    public int Int(string name, int fallback, int min = int.MinValue)
    {
        string? text = Optional(name);
        if (text is null) return fallback;
        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) || v < min)
            throw new UsageException($"--{name} must be an integer >= {min} (got '{text}')");
        return v;
    }

    public double Double(string name, double fallback, double min = double.MinValue)
    {
        string? text = Optional(name);
        if (text is null) return fallback;
        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || v < min)
            throw new UsageException($"--{name} must be a number >= {min} (got '{text}')");
        return v;
    }

    /// <summary>An enum option, matched case-insensitively against the member names (e.g. --score cosine|raw).</summary>
    public T Choice<T>(string name, T fallback) where T : struct, Enum
    {
        string? text = Optional(name);
        return text is null ? fallback : ParseChoice<T>(name, text);
    }

    /// <summary>Parses one enum value of option <paramref name="name"/>; the error lists the allowed values.</summary>
    public static T ParseChoice<T>(string name, string text) where T : struct, Enum =>
        Enum.TryParse<T>(text, ignoreCase: true, out var value) && Enum.IsDefined(value) && !int.TryParse(text, out _)
            ? value
            : throw new UsageException($"--{name} must be {string.Join(" or ", Enum.GetNames<T>().Select(n => n.ToLowerInvariant()))} (got '{text}')");

    /// <summary>Fails on options the command did not read (typos).</summary>
    public void RejectUnknown()
    {
        var unknown = _values.Keys.Where(k => !_used.Contains(k) && k != "verbose").ToList();
        if (unknown.Count > 0)
            throw new UsageException($"{Command} does not know --{unknown[0]}; run 'cmoe {Command} --help'");
    }
}

/// <summary>A wrong command line; printed as one line with exit code 2.</summary>
internal sealed class UsageException(string message) : Exception(message);
