using System.Collections.Immutable;
using System.Reflection;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.Diagnostics;
using Microsoft.CodeAnalysis.Text;

namespace CMoE.Tests.Reliability;

/// <summary>
/// The build-time ban on temporary TorchSharp scalars in <c>src/</c> (src/Directory.Build.props, src/BannedSymbols.txt, analyzer
/// RS0030): the list covers every API that TorchSharp's IL shows making one, and the analyzer really rejects code that uses one.
/// </summary>
public class TemporaryScalarBanTests
{
    private static string BannedFile => Path.Combine(TestPaths.RepoRoot, "src", "BannedSymbols.txt");

    [Fact]
    public void BannedSymbolsListEveryTemporaryScalarApi()
    {
        var expected = TemporaryScalarScan.UnsafeMembers(typeof(TorchSharp.torch).Assembly.Location);
        expected.Should().Contain("M:TorchSharp.Scalar.op_Implicit(System.Double)~TorchSharp.Scalar")
            .And.Contain("M:TorchSharp.torch.Tensor.op_Addition(TorchSharp.torch.Tensor,TorchSharp.torch.Tensor)")   // add(target, 1)
            .And.Contain("M:TorchSharp.torch.optim.Optimizer.step(System.Func{TorchSharp.torch.Tensor})")            // lambdas, virtual dispatch
            .And.NotContain("M:TorchSharp.torch.Tensor.op_Subtraction(TorchSharp.torch.Tensor,TorchSharp.torch.Tensor)") // THSTensor_sub: no scalar
            .And.NotContain("M:TorchSharp.torch.Tensor.add(TorchSharp.torch.Tensor,TorchSharp.Scalar)");
        if (Environment.GetEnvironmentVariable("CMOE_WRITE_BANNED_SYMBOLS") == "1") Write(expected);
        var listed = Listed();
        expected.Except(listed).Should().BeEmpty("src/BannedSymbols.txt must ban every TorchSharp API that makes a temporary scalar (regenerate it: CMOE_WRITE_BANNED_SYMBOLS=1 dotnet test --filter BannedSymbolsListEveryTemporaryScalarApi)");
        listed.Except(expected).Should().BeEmpty("src/BannedSymbols.txt lists only what the scan finds");
    }

    [Fact]
    public void AnalyzerRejectsTemporaryScalarsAndAcceptsLongLivedOnes()
    {
        const string code = """
            using TorchSharp;
            using static TorchSharp.torch;
            static class C
            {
            #pragma warning disable RS0030
                static readonly Scalar Half = 0.5.ToScalar();    // long-lived: the one sanctioned use, as in CMoE.Modeling.Scalars
            #pragma warning restore RS0030
                static Tensor Bad1(Tensor a, Tensor b) => a + b;                 // implicit alpha = 1
                static Tensor Bad2(Tensor a) => a * 0.5;                         // a number where a Scalar goes
                static Tensor Bad3(Tensor a) => a.masked_fill(a.lt(Half), -1);   // implicit conversion of -1
                static Tensor Good(Tensor a, Tensor b) => a.add(b, Half).mul(Half) - b;
            }
            """;
        var diagnostics = Analyze(code);
        diagnostics.Select(d => d.Location.GetLineSpan().StartLinePosition.Line + 1).Distinct().Should().BeEquivalentTo([8, 9, 10],
            string.Join("\n", diagnostics));
        diagnostics.Should().OnlyContain(d => d.Id == "RS0030");
        diagnostics.Should().Contain(d => d.GetMessage().Contains("operator +", StringComparison.Ordinal));
    }

    private static SortedSet<string> Listed() => new(File.ReadLines(BannedFile).Where(l => l.Length > 0)
        .Select(l => l.Split(';')[0].Trim()), StringComparer.Ordinal);

    private static void Write(SortedSet<string> ids)
    {
        const string why = "makes a temporary TorchSharp Scalar that a collection on another thread can free during the native call: " +
                           "pass a long-lived one (CMoE.Modeling.Scalars) or Scalars.Owned(value) in a using";
        File.WriteAllLines(BannedFile, ids.Select(id => $"{id};{why}"));   // the file's purpose is told in src/Directory.Build.props
    }

    /// <summary>Compiles <paramref name="code"/> against TorchSharp and runs the banned-API analyzer with src/BannedSymbols.txt.</summary>
    private static ImmutableArray<Diagnostic> Analyze(string code)
    {
        var references = ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(Path.PathSeparator)
            .Where(p => Path.GetFileName(p).StartsWith("System.", StringComparison.Ordinal) || Path.GetFileName(p) is "netstandard.dll" or "mscorlib.dll")
            .Append(typeof(TorchSharp.torch).Assembly.Location)
            .Select(p => MetadataReference.CreateFromFile(p));
        var compilation = CSharpCompilation.Create("Probe", [CSharpSyntaxTree.ParseText(code)], references,
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary));
        compilation.GetDiagnostics().Where(d => d.Severity == DiagnosticSeverity.Error).Should().BeEmpty();
        var analyzers = BannedApiAnalyzers().ToImmutableArray();
        analyzers.Should().NotBeEmpty();
        var options = new AnalyzerOptions([new FileText(BannedFile)]);
        return compilation.WithAnalyzers(analyzers, options).GetAnalyzerDiagnosticsAsync().Result
            .Where(d => d.Id.StartsWith("RS", StringComparison.Ordinal)).ToImmutableArray();
    }

    private static IEnumerable<DiagnosticAnalyzer> BannedApiAnalyzers()
    {
        // The analyzer the build uses, from the NuGet cache (the version src/Directory.Build.props restores).
        string version = System.Xml.Linq.XDocument.Load(Path.Combine(TestPaths.RepoRoot, "Directory.Packages.props")).Descendants("PackageVersion")
            .Single(e => (string?)e.Attribute("Include") == "Microsoft.CodeAnalysis.BannedApiAnalyzers").Attribute("Version")!.Value;
        string packages = Environment.GetEnvironmentVariable("NUGET_PACKAGES") ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        string folder = Path.Combine(packages, "microsoft.codeanalysis.bannedapianalyzers", version, "analyzers", "dotnet", "cs");
        foreach (var dll in Directory.GetFiles(folder, "*.dll"))
            foreach (var type in LoadableTypes(Assembly.LoadFrom(dll)))
                if (!type.IsAbstract && typeof(DiagnosticAnalyzer).IsAssignableFrom(type) && type.GetCustomAttribute<DiagnosticAnalyzerAttribute>() is { } a
                    && a.Languages.Contains(LanguageNames.CSharp))
                    yield return (DiagnosticAnalyzer)Activator.CreateInstance(type)!;
    }

    /// <summary>The types that load (the code-fix providers beside the analyzers need Roslyn's Workspaces, which the tests do not have).</summary>
    private static IEnumerable<Type> LoadableTypes(Assembly assembly)
    {
        try { return assembly.GetTypes(); }
        catch (ReflectionTypeLoadException e) { return e.Types.OfType<Type>(); }
    }

    private sealed class FileText(string path) : AdditionalText
    {
        public override string Path { get; } = path;
        public override SourceText GetText(CancellationToken cancellationToken = default) => SourceText.From(File.ReadAllText(Path));
    }
}
