using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;

namespace CMoE.Cli;

/// <summary>
/// Factories for the typed System.CommandLine options the commands declare: each carries its help text, its default
/// (shown by --help) and its range check, whose message names the option and the value given (a parse error, exit 2).
/// </summary>
internal static class CliOptions
{
    /// <summary>A required value, e.g. <c>--model &lt;hf-folder&gt;</c>.</summary>
    public static Option<string> Required(string name, string helpName, string description) =>
        new(name) { Description = description, HelpName = helpName, Required = true };

    /// <summary>An optional value without a default (null when not given).</summary>
    public static Option<string?> Optional(string name, string helpName, string description) =>
        new(name) { Description = description, HelpName = helpName };

    /// <summary>A switch.</summary>
    public static Option<bool> Flag(string name, string description) => new(name) { Description = description };

    /// <summary>An integer with a default and a lower bound.</summary>
    public static Option<int> Int(string name, int fallback, string description, int min = int.MinValue)
    {
        var option = new Option<int>(name)
        {
            Description = description, HelpName = "N", DefaultValueFactory = _ => fallback,
            CustomParser = r => ParseNumber(r, name, min, s => int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : null, "an integer"),
        };
        return option;
    }

    /// <summary>An optional integer without a default (null when not given).</summary>
    public static Option<int?> OptionalInt(string name, string description, int min = int.MinValue) =>
        new(name)
        {
            Description = description, HelpName = "N",
            CustomParser = r => ParseNumber<int>(r, name, min, s => int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : null, "an integer"),
        };

    /// <summary>A number with a default and a lower bound.</summary>
    public static Option<double> Double(string name, double fallback, string description, double min = double.MinValue) =>
        new(name)
        {
            Description = description, HelpName = "X", DefaultValueFactory = _ => fallback,
            CustomParser = r => ParseNumber(r, name, min, s => double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) ? v : null, "a number"),
        };

    /// <summary>An enum option, matched case-insensitively against the member names (e.g. --score cosine|raw).</summary>
    public static Option<T> Choice<T>(string name, T fallback, string description) where T : struct, Enum
    {
        var names = Enum.GetNames<T>().Select(n => n.ToLowerInvariant()).ToArray();
        var option = new Option<T>(name)
        {
            Description = description, HelpName = string.Join("|", names), DefaultValueFactory = _ => fallback,
            CustomParser = r =>
            {
                string text = r.Tokens.Single().Value;
                if (TryParseChoice<T>(text) is { } value) return value;
                r.AddError(ChoiceError<T>(name, text));
                return default;
            },
        };
        option.CompletionSources.Add(names);
        return option;
    }

    /// <summary>Parses one enum value of option <paramref name="name"/> (e.g. one item of a list); the error lists the allowed values.</summary>
    public static T ParseChoice<T>(string name, string text) where T : struct, Enum =>
        TryParseChoice<T>(text) ?? throw new UsageException(ChoiceError<T>(name, text));

    private static T? TryParseChoice<T>(string text) where T : struct, Enum =>
        Enum.TryParse<T>(text, ignoreCase: true, out var value) && Enum.IsDefined(value) && !int.TryParse(text, out _) ? value : null;

    private static string ChoiceError<T>(string name, string text) where T : struct, Enum =>
        $"{name} must be {string.Join(" or ", Enum.GetNames<T>().Select(n => n.ToLowerInvariant()))} (got '{text}')";

    private static TNum ParseNumber<TNum>(ArgumentResult r, string name, TNum min, Func<string, TNum?> parse, string what)
        where TNum : struct, IComparable<TNum>
    {
        string text = r.Tokens.Single().Value;
        if (parse(text) is { } v && v.CompareTo(min) >= 0) return v;
        bool unbounded = min.Equals(typeof(TNum) == typeof(int) ? (TNum)(object)int.MinValue : (TNum)(object)double.MinValue);
        r.AddError(unbounded ? $"{name} must be {what} (got '{text}')" : $"{name} must be {what} >= {min} (got '{text}')");
        return default;
    }
}

/// <summary>A wrong command line found after parsing (options that do not go together); printed as one line, exit code 2.</summary>
internal sealed class UsageException(string message) : Exception(message);
