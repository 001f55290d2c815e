using CMoE.Sweeps;
using ScottPlot;
using SkiaSharp;

namespace CMoE.Cli.Plotting;

/// <summary>
/// Renders a sweep as one PNG with two panels: the metric against the active FFN fraction (left) and
/// against decode tokens/s (right). Pareto points are red and joined; every point carries its layout.
/// </summary>
internal static class SweepPlot
{
    private const int PanelWidth = 900;
    private const int PanelHeight = 650;

    /// <summary>Writes the two-panel PNG to <paramref name="path"/>.</summary>
    public static void Save(SweepResult result, string path, string title)
    {
        var trials = result.Trials;
        var left = Panel(result, title, "active FFN fraction (%)", t => t.ActiveFraction * 100, t => t.ParetoByFraction,
            result.Dense is null ? null : 100.0, "vs active FFN fraction (lower-left is better)");
        bool haveSpeed = trials.Any(t => double.IsFinite(t.TokensPerSecond));
        var right = Panel(result, title, "decode tokens/s (greedy, KV cache, median)", t => t.TokensPerSecond, t => t.ParetoBySpeed,
            result.Dense?.TokensPerSecond, haveSpeed ? "vs decode speed (lower-right is better)" : "decode speed not measured");

        using var surface = SKSurface.Create(new SKImageInfo(2 * PanelWidth, PanelHeight));
        surface.Canvas.Clear(SKColors.White);
        DrawPanel(surface.Canvas, left, 0);
        DrawPanel(surface.Canvas, right, PanelWidth);
        using var image = surface.Snapshot();
        using var png = image.Encode(SKEncodedImageFormat.Png, 100);
        using var file = File.Create(path);
        png.SaveTo(file);
    }

    private static void DrawPanel(SKCanvas canvas, Plot plot, int x)
    {
        byte[] bytes = plot.GetImage(PanelWidth, PanelHeight).GetImageBytes(ImageFormat.Png);
        using var bitmap = SKBitmap.Decode(bytes);
        canvas.DrawBitmap(bitmap, x, 0);
    }

    private static Plot Panel(SweepResult result, string title, string xLabel, Func<SweepTrial, double> x,
        Func<SweepTrial, bool> onFront, double? denseX, string subtitle)
    {
        var plot = new Plot();
        var points = result.Trials.Where(t => double.IsFinite(x(t)) && double.IsFinite(t.Metric)).ToList();
        var others = points.Where(t => !onFront(t)).ToList();
        var front = points.Where(onFront).OrderBy(x).ToList();
        if (others.Count > 0)
        {
            var s = plot.Add.ScatterPoints(others.Select(x).ToArray(), others.Select(t => t.Metric).ToArray());
            s.Color = Colors.SteelBlue;
            s.MarkerSize = 9;
            s.LegendText = "trial";
        }
        if (front.Count > 0)
        {
            var s = plot.Add.Scatter(front.Select(x).ToArray(), front.Select(t => t.Metric).ToArray());
            s.Color = Colors.Crimson;
            s.MarkerSize = 13;
            s.LineWidth = 2;
            s.LegendText = "Pareto front";
        }
        // Labels of points that nearly coincide (same fraction, close metric) are stacked, not overprinted.
        double xRange = Math.Max(points.Select(x).DefaultIfEmpty(0).Max() - points.Select(x).DefaultIfEmpty(0).Min(), 1e-9);
        double yRange = Math.Max(points.Select(t => t.Metric).DefaultIfEmpty(0).Max() - points.Select(t => t.Metric).DefaultIfEmpty(0).Min(), 1e-9);
        var placed = new List<SweepTrial>();
        foreach (var t in points.OrderByDescending(t => t.Metric))
        {
            int clashes = placed.Count(p => Math.Abs(x(p) - x(t)) < 0.08 * xRange && Math.Abs(p.Metric - t.Metric) < 0.05 * yRange);
            placed.Add(t);
            var label = plot.Add.Text(t.Candidate.ToString(), x(t), t.Metric);
            label.LabelFontSize = 13;
            label.LabelFontColor = onFront(t) ? Colors.Crimson : Colors.Black;
            label.OffsetX = 7;
            label.OffsetY = -7 + 24 * clashes;
        }
        if (result.Dense is { } dense && denseX is { } dx && double.IsFinite(dx) && double.IsFinite(dense.Metric))
        {
            var m = plot.Add.Marker(dx, dense.Metric, MarkerShape.FilledDiamond, 13, Colors.DarkGreen);
            m.LegendText = "dense";
            var label = plot.Add.Text("dense", dx, dense.Metric);
            label.LabelFontSize = 13;
            label.LabelFontColor = Colors.DarkGreen;
            label.OffsetX = 7;
            label.OffsetY = -7;
        }
        plot.Title($"{title}\n{result.MetricName} {subtitle}");
        plot.XLabel(xLabel);
        plot.YLabel(result.MetricName + (result.LowerIsBetter ? " (lower is better)" : " (higher is better)"));
        plot.Axes.Margins(0.2, 0.12);
        plot.ShowLegend(Edge.Bottom);
        return plot;
    }
}
