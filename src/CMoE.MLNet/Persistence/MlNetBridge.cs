using System.Collections.Concurrent;
using System.Reflection;
using System.Reflection.Emit;
using System.Text.RegularExpressions;
using Microsoft.ML;
using Microsoft.ML.Runtime;

namespace CMoE.MLNet.Persistence;

/// <summary>
/// The only place that reaches ML.NET internals (by reflection): saving a transformer's payload into the zip written
/// by <c>mlContext.Model.Save</c>, and registering loaders so <c>mlContext.Model.Load</c> rebuilds it.
/// Built for Microsoft.ML <see cref="BuiltForMlNetVersion"/> (pinned in Directory.Packages.props); at first use it
/// checks every member it needs and throws <see cref="InvalidOperationException"/> naming that version if one is gone.
/// </summary>
/// <remarks>
/// <para>Save: <c>ModelSaveContext.CheckAtModel</c>, <c>SetVersionInfo(VersionInfo)</c> (model signature, version,
/// loader signature = format name, loader assembly "CMoE.MLNet"), <c>SaveBinaryStream</c> once per payload entry
/// (its own zip entry), or once per part for an entry over <see cref="ModelPayload.ChunkBytes"/> (ML.NET buffers a zip
/// entry whole and fails above 2 GB; parts <c>name.part0000</c>, ... and layout 2 of the body), then our body through <c>ModelSaveContext.Writer</c> (layout: <see cref="ModelPayload"/>).</para>
/// <para>Load: ML.NET finds a loader by the loader signature in the entry header, in the
/// <see cref="ComponentCatalog"/> of the <see cref="MLContext"/> doing the load. Its registration attribute
/// (<c>LoadableClassAttribute</c>) is internal, so C# cannot put it on our assembly. Instead, per transformer type we
/// emit once per process a tiny in-memory assembly carrying that attribute and a loader type whose
/// <c>Create(IHostEnvironment, ModelLoadContext)</c> forwards to <see cref="ILoadableTransformer{TSelf}.Load"/>,
/// and register it with the public <see cref="ComponentCatalog.RegisterAssembly"/> (idempotent and locked by ML.NET).
/// Because an MLContext's catalog starts empty of our loaders, a process must register them in each MLContext that
/// loads a CMoE model: users call <see cref="CMoECatalog.RegisterCMoE"/> (or <see cref="CMoECatalog.LoadCMoEModel"/>,
/// which does it); our transformers also register themselves in the context that creates them.
/// Making even that call unnecessary would need the attribute inside an on-disk assembly (IL rewriting at build).</para>
/// </remarks>
internal static class MlNetBridge
{
    /// <summary>The Microsoft.ML version whose internals this file was written against.</summary>
    public const string BuiltForMlNetVersion = "5.0.1";

    /// <summary>Written into each entry header; ML.NET loads (and scans) this assembly before looking up the loader.</summary>
    internal static readonly string LoaderAssemblyName = typeof(MlNetBridge).Assembly.GetName().Name!;

    private static readonly ConcurrentDictionary<Type, Lazy<Assembly>> LoaderAssemblies = new();
    private static readonly ConcurrentDictionary<string, Assembly> LoaderAssembliesByName = new(StringComparer.Ordinal);
    private static readonly Lazy<MethodInfo[]> OwnRegistrations = new(FindOwnLoadableTypes);
    private static int _resolverInstalled;

    // ---------------------------------------------------------------- save

    /// <summary>
    /// Saves <paramref name="payload"/> as this transformer's model entry. Call it from
    /// <c>ICanSaveModel.Save(ModelSaveContext ctx)</c> and write nothing else to <paramref name="ctx"/>.
    /// </summary>
    public static void Save(ModelSaveContext ctx, ModelPayload payload)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        ArgumentNullException.ThrowIfNull(payload);
        var api = Api.Value;
        if (!(bool)api.SaveInRepository.GetValue(ctx)!)
            throw new InvalidOperationException($"'{payload.Format.Name}' saves only into a model zip (mlContext.Model.Save), not into a single stream.");
        Call(api.SaveCheckAtModel, ctx);
        var f = payload.Format;
        object version = api.VersionInfoCtor.Invoke(BindingFlags.DoNotWrapExceptions, null,
            [f.ModelSignature, f.Version, f.Version, f.MinReadableVersion, LoaderAssemblyName, f.Name, null], null);
        Call(api.SetVersionInfo, ctx, version);

        long chunk = ModelPayload.ChunkBytes;
        var zipNames = new HashSet<string>(payload.EntryNames, StringComparer.OrdinalIgnoreCase);
        var stored = new List<(string Name, long Length, long[] Parts)>(payload.Entries.Count);
        foreach (var (name, open) in payload.Entries)
        {
            using var source = open();
            var pieces = ModelPayload.Split(name, source.Length, chunk);
            foreach (var (zipName, offset, length) in pieces)
            {
                if (pieces.Count > 1 && !zipNames.Add(zipName))
                    throw new InvalidOperationException($"Payload entry '{name}' is cut into parts, and part '{zipName}' has the name of another entry; rename that entry.");
                long written = 0;
                Action<BinaryWriter> writeEntry = w =>
                {
                    w.Flush();
                    var s = w.BaseStream;
                    long start = s.Position;
                    source.Write(s, offset, length);
                    s.Flush();
                    written = s.Position - start;
                };
                Call(api.SaveBinaryStream, ctx, zipName, writeEntry);
                if (written != length)
                    throw new InvalidOperationException($"Payload entry '{zipName}': {written} bytes were stored, {length} expected.");
            }
            stored.Add((name, source.Length, pieces.Count > 1 ? pieces.Select(p => p.Length).ToArray() : []));
        }
        payload.WriteBody((BinaryWriter)api.SaveWriter.GetValue(ctx)!, stored);
    }

    // ---------------------------------------------------------------- catalogs

    /// <summary>
    /// The <see cref="IHostEnvironment"/> behind a catalog such as <c>mlContext.Transforms</c> (ML.NET's own
    /// <c>CatalogUtils.GetEnvironment</c> is internal): the single instance property of that type, public or not.
    /// </summary>
    public static IHostEnvironment Environment(object catalog)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        // Trainer catalogs (mlContext.BinaryClassification.Trainers) keep theirs on a base class (CatalogInstantiatorBase), so each
        // type of the hierarchy is searched on its own.
        PropertyInfo? property = null;
        for (var type = catalog.GetType(); type is not null && property is null; type = type.BaseType)
            property = type.GetProperties(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly)
                .FirstOrDefault(p => p.PropertyType == typeof(IHostEnvironment) && p.GetIndexParameters().Length == 0);
        _ = property ?? throw new InvalidOperationException(
                $"{catalog.GetType().Name} has no IHostEnvironment property in this Microsoft.ML; CMoE.MLNet was built for " +
                $"Microsoft.ML {BuiltForMlNetVersion}. Reference that version (pinned in Directory.Packages.props).");
        return (IHostEnvironment)property!.GetValue(catalog)!;
    }

    /// <summary>
    /// ML.NET's own <c>SchemaShape.Create(DataViewSchema)</c> (internal, as is the <c>SchemaShape.Column</c>
    /// constructor): the shape estimators return from <c>GetOutputSchema</c>.
    /// </summary>
    public static SchemaShape ShapeOf(DataViewSchema schema)
    {
        ArgumentNullException.ThrowIfNull(schema);
        var create = typeof(SchemaShape).GetMethod("Create", BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic, [typeof(DataViewSchema)])
            ?? throw new InvalidOperationException(
                $"SchemaShape.Create(DataViewSchema) is missing in this Microsoft.ML; CMoE.MLNet was built for Microsoft.ML {BuiltForMlNetVersion}.");
        return (SchemaShape)create.Invoke(null, BindingFlags.DoNotWrapExceptions, null, [schema], null)!;
    }

    // ---------------------------------------------------------------- load

    /// <summary>
    /// Registers the loader of <typeparamref name="T"/> in the catalog of <paramref name="env"/> so
    /// <c>Model.Load</c> can rebuild it. Idempotent and thread-safe; cheap after the first call per process.
    /// </summary>
    public static void RegisterLoader<T>(IHostEnvironment env) where T : class, ITransformer, ILoadableTransformer<T>
    {
        ArgumentNullException.ThrowIfNull(env);
        var assembly = LoaderAssemblies.GetOrAdd(typeof(T), _ => new Lazy<Assembly>(EmitLoaderAssembly<T>)).Value;
        env.ComponentCatalog.RegisterAssembly(assembly);
    }

    /// <summary>Registers the loaders of every <see cref="ILoadableTransformer{TSelf}"/> in CMoE.MLNet.</summary>
    public static void RegisterAll(IHostEnvironment env)
    {
        ArgumentNullException.ThrowIfNull(env);
        MlNetVersionGuard.EnsureSupported();
        foreach (var register in OwnRegistrations.Value)
            register.Invoke(null, BindingFlags.DoNotWrapExceptions, null, [env], null);
    }

    /// <summary>Called by the emitted loader: checks the entry header and hands our payload to <typeparamref name="T"/>.</summary>
    private static T CreateFromContext<T>(IHostEnvironment env, object ctx) where T : class, ITransformer, ILoadableTransformer<T>
    {
        var api = Api.Value;
        var format = T.Format;
        string dir = (string?)api.LoadDirectory.GetValue(ctx) ?? "";
        string where = $"model zip entry '{dir}/Model.key' ({format.Name})";
        if (!(bool)api.LoadInRepository.GetValue(ctx)!)
            throw new CMoEFormatException($"{where}: CMoE transformers load only from a model zip (mlContext.Model.Load).");
        Call(api.LoadCheckAtModel, ctx);

        object header = api.LoadHeader.GetValue(ctx)!; // boxed ModelHeader
        ulong signature = (ulong)api.HeaderModelSignature.GetValue(header)!;
        uint written = (uint)api.HeaderVerWritten.GetValue(header)!;
        uint readable = (uint)api.HeaderVerReadable.GetValue(header)!;
        if (signature != SignatureBits(format.ModelSignature))
            throw new CMoEFormatException($"{where}: model signature 0x{signature:X16} is not '{format.ModelSignature}'; the entry claims our loader but was written by something else.");
        if (readable > written)
            throw new CMoEFormatException($"{where}: corrupt header (readable version {readable} > written version {written}).");
        ModelPayloadReader.CheckVersion(format, written, where);

        var reader = (BinaryReader)api.LoadReader.GetValue(ctx)!;
        bool TryOpen(string name, Action<Stream> read)
        {
            Action<BinaryReader> onEntry = r => read(r.BaseStream);
            return (bool)Call(api.TryLoadBinaryStream, ctx, name, onEntry)!;
        }
        var payload = ModelPayloadReader.Read(reader, format, TryOpen, where);
        return T.Load(env, payload);
    }

    // ---------------------------------------------------------------- loader emission

    private static Assembly EmitLoaderAssembly<T>() where T : class, ITransformer, ILoadableTransformer<T>
    {
        var api = Api.Value;
        var format = T.Format;
        format.Validate();
        InstallResolver();

        string simpleName = "CMoE.MLNet.Loader." + Regex.Replace($"{typeof(T).Assembly.GetName().Name}.{typeof(T).FullName}", "[^A-Za-z0-9_.]", "_");
        var assembly = AssemblyBuilder.DefineDynamicAssembly(new AssemblyName(simpleName), AssemblyBuilderAccess.Run);
        // The CustomAttribute reader resolves types named in the attribute blob by assembly name: answer for ours.
        LoaderAssembliesByName[simpleName] = assembly;
        var module = assembly.DefineDynamicModule(simpleName);

        // [assembly: IgnoresAccessChecksTo(...)] lets the emitted code name internal types (ModelLoadContext, T).
        var ignoresCtor = DefineIgnoresAccessChecksTo(module);
        foreach (string friend in new[] { api.Core.GetName().Name!, typeof(T).Assembly.GetName().Name! }.Distinct())
            assembly.SetCustomAttribute(new CustomAttributeBuilder(ignoresCtor, [friend]));

        // public static class Loader { public static Func<IHostEnvironment, object, object> Factory;
        //   public static T Create(IHostEnvironment env, ModelLoadContext ctx) => (T)Factory(env, ctx); }
        var type = module.DefineType("CMoELoader", TypeAttributes.Public | TypeAttributes.Abstract | TypeAttributes.Sealed | TypeAttributes.Class);
        var factoryField = type.DefineField("Factory", typeof(Func<IHostEnvironment, object, object>), FieldAttributes.Public | FieldAttributes.Static);
        var create = type.DefineMethod("Create", MethodAttributes.Public | MethodAttributes.Static, typeof(T), [typeof(IHostEnvironment), api.LoadContextType]);
        var il = create.GetILGenerator();
        il.Emit(OpCodes.Ldsfld, factoryField);
        il.Emit(OpCodes.Ldarg_0);
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Callvirt, typeof(Func<IHostEnvironment, object, object>).GetMethod("Invoke")!);
        il.Emit(OpCodes.Castclass, typeof(T));
        il.Emit(OpCodes.Ret);
        var loaderType = type.CreateType();
        loaderType.GetField("Factory")!.SetValue(null, (Func<IHostEnvironment, object, object>)((env, ctx) => CreateFromContext<T>(env, ctx)));

        // [assembly: LoadableClass(typeof(T), typeof(Loader), null, typeof(SignatureLoadModel), name, name)]
        assembly.SetCustomAttribute(new CustomAttributeBuilder(api.LoadableClassCtor,
            [typeof(T), loaderType, null, api.SignatureLoadModel, format.Name, new[] { format.Name }]));
        return assembly;
    }

    private static ConstructorInfo DefineIgnoresAccessChecksTo(ModuleBuilder module)
    {
        var type = module.DefineType("System.Runtime.CompilerServices.IgnoresAccessChecksToAttribute",
            TypeAttributes.Public | TypeAttributes.Sealed | TypeAttributes.Class, typeof(Attribute));
        var ctor = type.DefineConstructor(MethodAttributes.Public, CallingConventions.Standard, [typeof(string)]);
        var il = ctor.GetILGenerator();
        il.Emit(OpCodes.Ldarg_0);
        il.Emit(OpCodes.Call, typeof(Attribute).GetConstructor(BindingFlags.NonPublic | BindingFlags.Instance, Type.EmptyTypes)!);
        il.Emit(OpCodes.Ret);
        return type.CreateType().GetConstructor([typeof(string)])!;
    }

    private static void InstallResolver()
    {
        if (Interlocked.Exchange(ref _resolverInstalled, 1) == 0)
            AppDomain.CurrentDomain.AssemblyResolve += (_, e) =>
                LoaderAssembliesByName.TryGetValue(new AssemblyName(e.Name).Name ?? "", out var a) ? a : null;
    }

    private static MethodInfo[] FindOwnLoadableTypes()
    {
        var open = typeof(MlNetBridge).GetMethod(nameof(RegisterLoader))!;
        return typeof(MlNetBridge).Assembly.GetTypes()
            .Where(t => t is { IsClass: true, IsAbstract: false, IsGenericTypeDefinition: false }
                        && t.GetInterfaces().Any(i => i.IsGenericType && i.GetGenericTypeDefinition() == typeof(ILoadableTransformer<>) && i.GenericTypeArguments[0] == t))
            .Select(t => open.MakeGenericMethod(t))
            .ToArray();
    }

    /// <summary>ML.NET's packing of an 8-character model signature (VersionInfo): char i in byte i, little-endian.</summary>
    private static ulong SignatureBits(string signature)
    {
        ulong bits = 0;
        for (int i = 0; i < signature.Length; i++)
            if (signature[i] != ' ') bits |= (ulong)(byte)signature[i] << (i * 8);
        return bits;
    }

    private static object? Call(MethodInfo method, object target, params object?[] args) =>
        method.Invoke(target, BindingFlags.DoNotWrapExceptions, null, args, null);

    // ---------------------------------------------------------------- the internals we use, checked once

    private static readonly Lazy<Members> Api = new(Members.Resolve, LazyThreadSafetyMode.ExecutionAndPublication);

    private sealed class Members
    {
        public required Assembly Core { get; init; }
        public required PropertyInfo SaveInRepository { get; init; }
        public required MethodInfo SaveCheckAtModel { get; init; }
        public required MethodInfo SetVersionInfo { get; init; }
        public required ConstructorInfo VersionInfoCtor { get; init; }
        public required MethodInfo SaveBinaryStream { get; init; }
        public required FieldInfo SaveWriter { get; init; }
        public required Type LoadContextType { get; init; }
        public required PropertyInfo LoadInRepository { get; init; }
        public required FieldInfo LoadDirectory { get; init; }
        public required FieldInfo LoadReader { get; init; }
        public required FieldInfo LoadHeader { get; init; }
        public required FieldInfo HeaderModelSignature { get; init; }
        public required FieldInfo HeaderVerWritten { get; init; }
        public required FieldInfo HeaderVerReadable { get; init; }
        public required MethodInfo LoadCheckAtModel { get; init; }
        public required MethodInfo TryLoadBinaryStream { get; init; }
        public required Type SignatureLoadModel { get; init; }
        public required ConstructorInfo LoadableClassCtor { get; init; }

        public static Members Resolve()
        {
            const BindingFlags Inst = BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic;
            var core = typeof(ModelSaveContext).Assembly;
            var missing = new List<string>();

            T? Need<T>(T? member, string what) where T : class
            {
                if (member is null) missing.Add(what);
                return member;
            }
            Type? NeedType(string name) => Need(core.GetType(name, throwOnError: false), name);

            var save = typeof(ModelSaveContext);
            var load = NeedType("Microsoft.ML.ModelLoadContext");
            var versionInfo = NeedType("Microsoft.ML.VersionInfo");
            var header = NeedType("Microsoft.ML.ModelHeader");
            var signature = NeedType("Microsoft.ML.SignatureLoadModel");
            var loadable = NeedType("Microsoft.ML.LoadableClassAttribute");

            var m = new Members
            {
                Core = core,
                SaveInRepository = Need(save.GetProperty("InRepository", Inst), "ModelSaveContext.InRepository")!,
                SaveCheckAtModel = Need(save.GetMethod("CheckAtModel", Inst, Type.EmptyTypes), "ModelSaveContext.CheckAtModel()")!,
                SetVersionInfo = versionInfo is null ? null! : Need(save.GetMethod("SetVersionInfo", Inst, [versionInfo]), "ModelSaveContext.SetVersionInfo(VersionInfo)")!,
                VersionInfoCtor = versionInfo?.GetConstructor(Inst, [typeof(string), typeof(uint), typeof(uint), typeof(uint), typeof(string), typeof(string), typeof(string)]) is { } vc ? vc : Need<ConstructorInfo>(null, "VersionInfo(string, uint, uint, uint, string, string, string)")!,
                SaveBinaryStream = Need(save.GetMethod("SaveBinaryStream", Inst, [typeof(string), typeof(Action<BinaryWriter>)]), "ModelSaveContext.SaveBinaryStream(string, Action<BinaryWriter>)")!,
                SaveWriter = Need(save.GetField("Writer", Inst), "ModelSaveContext.Writer")!,
                LoadContextType = load!,
                LoadInRepository = Need(load?.GetProperty("InRepository", Inst), "ModelLoadContext.InRepository")!,
                LoadDirectory = Need(load?.GetField("Directory", Inst), "ModelLoadContext.Directory")!,
                LoadReader = Need(load?.GetField("Reader", Inst), "ModelLoadContext.Reader")!,
                LoadHeader = Need(load?.GetField("Header", Inst), "ModelLoadContext.Header")!,
                HeaderModelSignature = Need(header?.GetField("ModelSignature", Inst), "ModelHeader.ModelSignature")!,
                HeaderVerWritten = Need(header?.GetField("ModelVerWritten", Inst), "ModelHeader.ModelVerWritten")!,
                HeaderVerReadable = Need(header?.GetField("ModelVerReadable", Inst), "ModelHeader.ModelVerReadable")!,
                LoadCheckAtModel = Need(load?.GetMethod("CheckAtModel", Inst, Type.EmptyTypes), "ModelLoadContext.CheckAtModel()")!,
                TryLoadBinaryStream = Need(load?.GetMethod("TryLoadBinaryStream", Inst, [typeof(string), typeof(Action<BinaryReader>)]), "ModelLoadContext.TryLoadBinaryStream(string, Action<BinaryReader>)")!,
                SignatureLoadModel = signature!,
                LoadableClassCtor = Need(loadable?.GetConstructor(Inst, [typeof(Type), typeof(Type), typeof(Type), typeof(Type), typeof(string), typeof(string[])]),
                    "LoadableClassAttribute(Type, Type, Type, Type, string, string[])")!,
            };
            if (missing.Count == 0)
            {
                if (m.HeaderModelSignature.FieldType != typeof(ulong)) missing.Add("ModelHeader.ModelSignature as ulong");
                if (m.HeaderVerWritten.FieldType != typeof(uint)) missing.Add("ModelHeader.ModelVerWritten as uint");
                if (m.HeaderVerReadable.FieldType != typeof(uint)) missing.Add("ModelHeader.ModelVerReadable as uint");
                if (m.LoadReader.FieldType != typeof(BinaryReader)) missing.Add("ModelLoadContext.Reader as BinaryReader");
                if (m.SaveWriter.FieldType != typeof(BinaryWriter)) missing.Add("ModelSaveContext.Writer as BinaryWriter");
            }
            if (missing.Count > 0)
            {
                string found = core.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? core.GetName().Version?.ToString() ?? "?";
                throw new InvalidOperationException(
                    $"CMoE.MLNet model persistence was built for Microsoft.ML {BuiltForMlNetVersion}, but the loaded Microsoft.ML.Core ({found}) " +
                    $"lacks: {string.Join("; ", missing)}. Reference Microsoft.ML {BuiltForMlNetVersion} (pinned in Directory.Packages.props), " +
                    "or update src/CMoE.MLNet/Persistence/MlNetBridge.cs for the new version.");
            }
            return m;
        }
    }
}
