using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace CMoE.Sweeps;

/// <summary>
/// Writes a <see cref="SweepResult"/> as JSON (<c>format = cmoe-sweep</c>, <c>version = 1</c>) and as a
/// Markdown table.
/// </summary>
public static class SweepReport
{
    /// <summary>Format name in the JSON.</summary>
    public const string FormatName = "cmoe-sweep";

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>
    /// The JSON document: <c>format</c>, <c>version</c>, <c>context</c> (the caller's provenance: model,
    /// texts, options), <c>metric</c>, <c>lower_is_better</c>, <c>dense</c>, <c>profiles</c>,
    /// <c>profile_seconds</c>, <c>total_seconds</c>, <c>recommended</c> (knee), and <c>trials</c>, each with
    /// <c>layout</c>, <c>score</c>, <c>k_act</c>, <c>active_fraction</c>, <c>active_parameters</c>,
    /// <c>metric</c>, <c>tokens_per_second</c>, <c>carve_seconds</c>, <c>metric_seconds</c>,
    /// <c>pareto_fraction</c>, <c>pareto_speed</c>. NaN figures are written as null.
    /// </summary>
    public static string ToJson(SweepResult result, JsonObject? context = null)
    {
        var trials = new JsonArray();
        foreach (var t in result.Trials)
            trials.Add(new JsonObject
            {
                ["index"] = t.Index,
                ["layout"] = t.Layout.ToString(),
                ["score"] = t.Candidate.Score.ToString().ToLowerInvariant(),
                ["k_act"] = t.Candidate.KAct,
                ["active_fraction"] = t.ActiveFraction,
                ["active_parameters"] = t.ActiveParameters,
                ["metric"] = Number(t.Metric),
                ["tokens_per_second"] = Number(t.TokensPerSecond),
                ["carve_seconds"] = Math.Round(t.CarveSeconds, 3),
                ["metric_seconds"] = Math.Round(t.MetricSeconds, 3),
                ["pareto_fraction"] = t.ParetoByFraction,
                ["pareto_speed"] = t.ParetoBySpeed,
            });
        var doc = new JsonObject
        {
            ["format"] = FormatName,
            ["version"] = 1,
            ["context"] = context?.DeepClone() ?? new JsonObject(),
            ["metric"] = result.MetricName,
            ["lower_is_better"] = result.LowerIsBetter,
            ["dense"] = result.Dense is { } d
                ? new JsonObject { ["active_parameters"] = d.ActiveParameters, ["metric"] = Number(d.Metric), ["tokens_per_second"] = Number(d.TokensPerSecond) }
                : null,
            ["profiles"] = result.Profiles,
            ["profile_seconds"] = Math.Round(result.ProfileSeconds, 3),
            ["total_seconds"] = Math.Round(result.TotalSeconds, 3),
            ["candidates_skipped"] = result.CandidatesSkipped,
            ["stopped_by_time"] = result.StoppedByTime,
            ["recommended"] = result.Recommend()?.Candidate.ToString(),
            ["trials"] = trials,
        };
        return doc.ToJsonString(Indented);
    }

    /// <summary>A Markdown table of the trials (dense first when present), Pareto points marked.</summary>
    public static string ToMarkdown(SweepResult result, string? title = null)
    {
        var ci = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        if (title is not null) sb.Append("# ").AppendLine(title).AppendLine();
        sb.AppendLine(ci, $"| layout | active FFN | active params | {result.MetricName} | decode tokens/s | carve s | Pareto (fraction) | Pareto (speed) |");
        sb.AppendLine("| --- | ---: | ---: | ---: | ---: | ---: | :---: | :---: |");
        if (result.Dense is { } d)
            sb.AppendLine(ci, $"| dense | 100.0% | {d.ActiveParameters / 1e6:F2} M | {Format(d.Metric)} | {Format(d.TokensPerSecond, "F1")} | - | - | - |");
        foreach (var t in result.Trials.OrderByDescending(t => t.ActiveFraction).ThenBy(t => t.Layout.Experts))
            sb.AppendLine(ci, $"| {t.Candidate} | {t.ActiveFraction * 100:F1}% | {t.ActiveParameters / 1e6:F2} M | {Format(t.Metric)} | {Format(t.TokensPerSecond, "F1")} | {t.CarveSeconds:F1} | {(t.ParetoByFraction ? "yes" : "")} | {(t.ParetoBySpeed ? "yes" : "")} |");
        sb.AppendLine();
        sb.Append(ci, $"{result.Trials.Count} trial(s), {result.Profiles} calibration profile(s) computed once in {result.ProfileSeconds:F1} s and reused; total {result.TotalSeconds:F0} s.");
        sb.AppendLine(result.StoppedByTime ? " Stopped by the time budget." : "");
        if (result.Recommend() is { } knee) sb.AppendLine().AppendLine(ci, $"Knee of the {result.MetricName} / active-fraction front: **{knee.Candidate}**.");
        return sb.ToString();
    }

    private static JsonNode? Number(double v) => double.IsFinite(v) ? JsonValue.Create(v) : null;

    private static string Format(double v, string format = "F3") =>
        double.IsFinite(v) ? v.ToString(format, CultureInfo.InvariantCulture) : "n/a";
}
