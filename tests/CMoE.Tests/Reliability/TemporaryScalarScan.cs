using System.Collections.Immutable;
using System.Reflection.Emit;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;
using System.Text;

namespace CMoE.Tests.Reliability;

/// <summary>
/// Finds, in TorchSharp's own IL, every public API that turns a number into a temporary native <c>Scalar</c> without keeping it
/// alive through the native call (dotnet/TorchSharp #1434, #1496): the implicit conversions to <c>Scalar</c> themselves, and
/// every public method that calls one (or calls such a method) more often than it disposes a <c>Scalar</c>, e.g.
/// <c>Tensor.add(Tensor)</c>, which is <c>add(target, 1)</c>, and the operator <c>a + b</c> that calls it. The result, as
/// documentation-comment ids, is what <c>src/BannedSymbols.txt</c> must list (the build-time check of <c>src/</c>).
/// </summary>
internal static class TemporaryScalarScan
{
    private static readonly Dictionary<short, OperandType> Operands = typeof(OpCodes).GetFields()
        .Select(f => (OpCode)f.GetValue(null)!).ToDictionary(o => o.Value, o => o.OperandType);

    /// <summary>Documentation-comment ids ("M:...") of the public TorchSharp members that make a temporary scalar.</summary>
    public static SortedSet<string> UnsafeMembers(string torchSharpDll)
    {
        using var stream = File.OpenRead(torchSharpDll);
        using var pe = new PEReader(stream);
        var md = pe.GetMetadataReader();
        var ids = new DocIds(md);

        MethodDefinitionHandle[] all = md.MethodDefinitions.ToArray();
        var calls = new Dictionary<MethodDefinitionHandle, List<MethodDefinitionHandle>>();
        var creators = new HashSet<MethodDefinitionHandle>();            // return a new Scalar made from a number
        var scalarDispose = default(MethodDefinitionHandle);
        foreach (var h in all)
        {
            var m = md.GetMethodDefinition(h);
            string type = ids.TypeName(m.GetDeclaringType()), name = md.GetString(m.Name);
            if (type == "TorchSharp.Scalar" && name == "op_Implicit") creators.Add(h);
            if (type == "TorchSharp.ScalarExtensionMethods" && name == "ToScalar") creators.Add(h);
            if (type == "TorchSharp.Scalar" && name == "Dispose" && m.GetParameters().Count == 0) scalarDispose = h;
            calls[h] = m.RelativeVirtualAddress == 0 ? [] : Callees(md, pe.GetMethodBody(m.RelativeVirtualAddress));
        }

        // A method is unsafe when it makes more scalars (through creators) than it disposes, or calls an unsafe method.
        var unsafeSet = new HashSet<MethodDefinitionHandle>(creators);
        bool changed = true;
        while (changed)
        {
            changed = false;
            foreach (var h in all)
            {
                if (unsafeSet.Contains(h)) continue;
                var callees = calls[h];
                int made = callees.Count(creators.Contains), disposed = callees.Count(c => c == scalarDispose);
                bool viaOther = callees.Any(c => !creators.Contains(c) && unsafeSet.Contains(c));
                if (made > disposed || viaOther)
                {
                    unsafeSet.Add(h);
                    changed = true;
                }
            }
        }
        var result = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var h in unsafeSet)
        {
            if (!ids.IsPublicApi(h)) continue;
            result.Add(ids.Method(h));
            // A call through a base declaration (e.g. Optimizer.step on an AdamW) dispatches to the unsafe override: ban the
            // base too. Not for modules' forward/call, which every module (ours included) overrides; the TorchSharp modules
            // whose forward makes a temporary scalar are banned by name.
            foreach (var b in ids.BaseDeclarations(h))
                if (md.GetString(md.GetMethodDefinition(b).Name) is not ("forward" or "call")) result.Add(ids.Method(b));
        }
        return result;
    }

    private static List<MethodDefinitionHandle> Callees(MetadataReader md, MethodBodyBlock body)
    {
        var callees = new List<MethodDefinitionHandle>();
        var il = body.GetILReader();
        while (il.RemainingBytes > 0)
        {
            short code = il.ReadByte();
            if (code == 0xFE) code = unchecked((short)(0xFE00 | il.ReadByte()));
            switch (Operands[code])
            {
                case OperandType.InlineNone: break;
                case OperandType.ShortInlineBrTarget:
                case OperandType.ShortInlineI:
                case OperandType.ShortInlineVar: il.ReadByte(); break;
                case OperandType.InlineVar: il.ReadInt16(); break;
                case OperandType.InlineI8:
                case OperandType.InlineR: il.ReadInt64(); break;
                case OperandType.InlineSwitch:
                    int n = il.ReadInt32();
                    for (int i = 0; i < n; i++) il.ReadInt32();
                    break;
                case OperandType.InlineMethod:
                    var token = MetadataTokens.EntityHandle(il.ReadInt32());
                    // call, callvirt, newobj; and ldftn / ldvirtftn, since a delegate made here is usually run here (a lambda)
                    if (code is 0x28 or 0x6F or 0x73 or unchecked((short)0xFE06) or unchecked((short)0xFE07) && Resolve(md, token) is { } target) callees.Add(target);
                    break;
                default: il.ReadInt32(); break;     // every other operand is 4 bytes
            }
        }
        return callees;
    }

    private static MethodDefinitionHandle? Resolve(MetadataReader md, EntityHandle token) => token.Kind switch
    {
        HandleKind.MethodDefinition => (MethodDefinitionHandle)token,
        HandleKind.MethodSpecification => Resolve(md, md.GetMethodSpecification((MethodSpecificationHandle)token).Method),
        _ => null,   // a member of another assembly
    };

    /// <summary>Documentation-comment ids for TorchSharp's methods (the format BannedSymbols.txt uses).</summary>
    private sealed class DocIds(MetadataReader md) : ISignatureTypeProvider<string, object?>
    {
        public string TypeName(TypeDefinitionHandle h)
        {
            var t = md.GetTypeDefinition(h);
            string name = StripArity(md.GetString(t.Name));
            var outer = t.GetDeclaringType();
            if (!outer.IsNil) return TypeName(outer) + "." + name;
            string ns = md.GetString(t.Namespace);
            return ns.Length == 0 ? name : ns + "." + name;
        }

        /// <summary>The same-named, same-signature virtual methods of <paramref name="h"/>'s base types within TorchSharp.</summary>
        public IEnumerable<MethodDefinitionHandle> BaseDeclarations(MethodDefinitionHandle h)
        {
            var m = md.GetMethodDefinition(h);
            if ((m.Attributes & System.Reflection.MethodAttributes.Virtual) == 0) yield break;
            string suffix = Method(h)[(Method(h).LastIndexOf('.') + 1)..];   // name and signature
            for (var t = BaseType(m.GetDeclaringType()); t is { } type; t = BaseType(type))
                foreach (var c in md.GetTypeDefinition(type).GetMethods())
                {
                    var cm = md.GetMethodDefinition(c);
                    if ((cm.Attributes & System.Reflection.MethodAttributes.Virtual) != 0 && md.StringComparer.Equals(cm.Name, md.GetString(m.Name))
                        && Method(c).EndsWith("." + suffix, StringComparison.Ordinal) && IsPublicApi(c))
                        yield return c;
                }
        }

        private TypeDefinitionHandle? BaseType(TypeDefinitionHandle h)
        {
            var b = md.GetTypeDefinition(h).BaseType;
            if (b.Kind == HandleKind.TypeDefinition) return (TypeDefinitionHandle)b;
            if (b.Kind == HandleKind.TypeSpecification)                       // a generic base: its definition, when in TorchSharp
            {
                var blob = md.GetBlobReader(md.GetTypeSpecification((TypeSpecificationHandle)b).Signature);
                if (blob.ReadSignatureTypeCode() == SignatureTypeCode.GenericTypeInstance)
                {
                    blob.ReadSignatureTypeCode();
                    var generic = blob.ReadTypeHandle();
                    if (generic.Kind == HandleKind.TypeDefinition) return (TypeDefinitionHandle)generic;
                }
            }
            return null;
        }

        public bool IsPublicApi(MethodDefinitionHandle h)
        {
            var m = md.GetMethodDefinition(h);
            var access = m.Attributes & System.Reflection.MethodAttributes.MemberAccessMask;
            if (access is not (System.Reflection.MethodAttributes.Public or System.Reflection.MethodAttributes.Family or System.Reflection.MethodAttributes.FamORAssem)) return false;
            for (var t = m.GetDeclaringType(); !t.IsNil; t = md.GetTypeDefinition(t).GetDeclaringType())
            {
                var vis = md.GetTypeDefinition(t).Attributes & System.Reflection.TypeAttributes.VisibilityMask;
                if (vis is not (System.Reflection.TypeAttributes.Public or System.Reflection.TypeAttributes.NestedPublic or System.Reflection.TypeAttributes.NestedFamily)) return false;
            }
            return true;
        }

        public string Method(MethodDefinitionHandle h)
        {
            var m = md.GetMethodDefinition(h);
            string name = md.GetString(m.Name).Replace('.', '#');
            var sig = m.DecodeSignature(this, null);
            var sb = new StringBuilder("M:").Append(TypeName(m.GetDeclaringType())).Append('.').Append(name);
            if (sig.GenericParameterCount > 0) sb.Append("``").Append(sig.GenericParameterCount);
            if (sig.ParameterTypes.Length > 0) sb.Append('(').Append(string.Join(",", sig.ParameterTypes)).Append(')');
            if (name is "op_Implicit" or "op_Explicit") sb.Append('~').Append(sig.ReturnType);
            return sb.ToString();
        }

        private static string StripArity(string name) => name.IndexOf('`') is var i and >= 0 ? name[..i] : name;

        public string GetPrimitiveType(PrimitiveTypeCode c) => c switch
        {
            PrimitiveTypeCode.Boolean => "System.Boolean", PrimitiveTypeCode.Byte => "System.Byte", PrimitiveTypeCode.SByte => "System.SByte",
            PrimitiveTypeCode.Char => "System.Char", PrimitiveTypeCode.Int16 => "System.Int16", PrimitiveTypeCode.UInt16 => "System.UInt16",
            PrimitiveTypeCode.Int32 => "System.Int32", PrimitiveTypeCode.UInt32 => "System.UInt32", PrimitiveTypeCode.Int64 => "System.Int64",
            PrimitiveTypeCode.UInt64 => "System.UInt64", PrimitiveTypeCode.Single => "System.Single", PrimitiveTypeCode.Double => "System.Double",
            PrimitiveTypeCode.String => "System.String", PrimitiveTypeCode.Object => "System.Object", PrimitiveTypeCode.IntPtr => "System.IntPtr",
            PrimitiveTypeCode.UIntPtr => "System.UIntPtr", PrimitiveTypeCode.Void => "System.Void", PrimitiveTypeCode.TypedReference => "System.TypedReference",
            _ => c.ToString(),
        };

        public string GetTypeFromDefinition(MetadataReader r, TypeDefinitionHandle h, byte kind) => TypeName(h);

        public string GetTypeFromReference(MetadataReader r, TypeReferenceHandle h, byte kind)
        {
            var t = r.GetTypeReference(h);
            string name = StripArity(r.GetString(t.Name));
            if (t.ResolutionScope.Kind == HandleKind.TypeReference) return GetTypeFromReference(r, (TypeReferenceHandle)t.ResolutionScope, kind) + "." + name;
            string ns = r.GetString(t.Namespace);
            return ns.Length == 0 ? name : ns + "." + name;
        }

        public string GetTypeFromSpecification(MetadataReader r, object? c, TypeSpecificationHandle h, byte kind) =>
            r.GetTypeSpecification(h).DecodeSignature(this, c);
        public string GetSZArrayType(string element) => element + "[]";
        public string GetArrayType(string element, ArrayShape shape) => element + "[" + string.Join(",", Enumerable.Repeat("0:", shape.Rank)) + "]";
        public string GetByReferenceType(string element) => element + "@";
        public string GetPointerType(string element) => element + "*";
        public string GetPinnedType(string element) => element;
        public string GetGenericInstantiation(string generic, ImmutableArray<string> args) => generic + "{" + string.Join(",", args) + "}";
        public string GetGenericMethodParameter(object? c, int index) => "``" + index;
        public string GetGenericTypeParameter(object? c, int index) => "`" + index;
        public string GetModifiedType(string modifier, string unmodified, bool isRequired) => unmodified;
        public string GetFunctionPointerType(MethodSignature<string> signature) => "method";
    }
}
