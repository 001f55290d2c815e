using System.Reflection;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace CMoE.MLNet.Data;

/// <summary>One input column a transformer reads, with the type it needs.</summary>
/// <param name="Name">Column name in the input schema.</param>
/// <param name="Type">Expected type. A <see cref="VectorDataViewType"/> of size 0 accepts vectors of any size.</param>
internal sealed record InputColumn(string Name, DataViewType Type)
{
    /// <summary>Whether <paramref name="actual"/> satisfies <see cref="Type"/>.</summary>
    public bool Accepts(DataViewType actual) =>
        Type is VectorDataViewType { Size: 0 } any
            ? actual is VectorDataViewType v && v.ItemType.Equals(any.ItemType)
            : actual.Equals(Type);

    /// <summary>Finds the column in <paramref name="schema"/> or throws a message naming it, its expected type and the fix.</summary>
    public DataViewSchema.Column Find(DataViewSchema schema, string transformer)
    {
        var column = schema.GetColumnOrNull(Name);
        if (column is null)
            throw new ArgumentOutOfRangeException(nameof(schema),
                $"{transformer}: input column '{Name}' not found; it must be of type {Type}. Input columns: " +
                $"{string.Join(", ", schema.Where(c => !c.IsHidden).Select(c => $"{c.Name} ({c.Type})"))}.");
        if (!Accepts(column.Value.Type))
            throw new ArgumentOutOfRangeException(nameof(schema),
                $"{transformer}: input column '{Name}' has type {column.Value.Type}, expected {Type}. Convert it first (e.g. mlContext.Transforms.Conversion.ConvertType).");
        return column.Value;
    }
}

/// <summary>
/// Moves column values between ML.NET's typed getters and plain objects for <see cref="RowMapperTransformerBase"/>:
/// numbers and bool as themselves, text as <see cref="string"/>, vectors as dense arrays (string[] for text).
/// Values are copied, so they stay valid after the cursor moves.
/// </summary>
internal static class ColumnValues
{
    private static readonly MethodInfo ScalarReaderMethod = typeof(ColumnValues).GetMethod(nameof(ScalarReader), BindingFlags.NonPublic | BindingFlags.Static)!;
    private static readonly MethodInfo VectorReaderMethod = typeof(ColumnValues).GetMethod(nameof(VectorReader), BindingFlags.NonPublic | BindingFlags.Static)!;
    private static readonly MethodInfo ScalarGetterMethod = typeof(ColumnValues).GetMethod(nameof(ScalarGetter), BindingFlags.NonPublic | BindingFlags.Static)!;
    private static readonly MethodInfo VectorGetterMethod = typeof(ColumnValues).GetMethod(nameof(VectorGetter), BindingFlags.NonPublic | BindingFlags.Static)!;

    /// <summary>A function reading the current value of <paramref name="column"/> of <paramref name="row"/> as an object.</summary>
    public static Func<object> Reader(DataViewRow row, DataViewSchema.Column column) => column.Type switch
    {
        TextDataViewType => TextReader(row.GetGetter<ReadOnlyMemory<char>>(column)),
        VectorDataViewType { ItemType: TextDataViewType } => TextVectorReader(row.GetGetter<VBuffer<ReadOnlyMemory<char>>>(column)),
        VectorDataViewType v => (Func<object>)VectorReaderMethod.MakeGenericMethod(v.ItemType.RawType).Invoke(null, [row, column])!,
        var t => (Func<object>)ScalarReaderMethod.MakeGenericMethod(t.RawType).Invoke(null, [row, column])!,
    };

    /// <summary>A typed ML.NET getter (a <c>ValueGetter&lt;T&gt;</c> for <paramref name="type"/>) over an object source.</summary>
    public static Delegate Getter(DataViewType type, Func<object> value) => type switch
    {
        TextDataViewType => (ValueGetter<ReadOnlyMemory<char>>)((ref ReadOnlyMemory<char> dst) => dst = ((string)value()).AsMemory()),
        VectorDataViewType { ItemType: TextDataViewType } => (ValueGetter<VBuffer<ReadOnlyMemory<char>>>)((ref VBuffer<ReadOnlyMemory<char>> dst) =>
        {
            var src = (string[])value();
            var editor = VBufferEditor.Create(ref dst, src.Length);
            for (int i = 0; i < src.Length; i++) editor.Values[i] = src[i].AsMemory();
            dst = editor.Commit();
        }),
        VectorDataViewType v => (Delegate)VectorGetterMethod.MakeGenericMethod(v.ItemType.RawType).Invoke(null, [value])!,
        var t => (Delegate)ScalarGetterMethod.MakeGenericMethod(t.RawType).Invoke(null, [value])!,
    };

    private static Func<object> TextReader(ValueGetter<ReadOnlyMemory<char>> get) => () =>
    {
        ReadOnlyMemory<char> v = default;
        get(ref v);
        return v.ToString();
    };

    private static Func<object> TextVectorReader(ValueGetter<VBuffer<ReadOnlyMemory<char>>> get)
    {
        VBuffer<ReadOnlyMemory<char>> buffer = default;
        return () =>
        {
            get(ref buffer);
            var dense = new string[buffer.Length];
            int i = 0;
            foreach (var s in buffer.DenseValues()) dense[i++] = s.ToString();
            return dense;
        };
    }

    private static Func<object> ScalarReader<T>(DataViewRow row, DataViewSchema.Column column)
    {
        var get = row.GetGetter<T>(column);
        return () =>
        {
            T v = default!;
            get(ref v);
            return v!;
        };
    }

    private static Func<object> VectorReader<T>(DataViewRow row, DataViewSchema.Column column)
    {
        var get = row.GetGetter<VBuffer<T>>(column);
        VBuffer<T> buffer = default;
        return () =>
        {
            get(ref buffer);
            var dense = new T[buffer.Length];
            buffer.CopyTo(dense);
            return dense;
        };
    }

    private static ValueGetter<T> ScalarGetter<T>(Func<object> value) => (ref T dst) => dst = (T)value();

    private static ValueGetter<VBuffer<T>> VectorGetter<T>(Func<object> value) => (ref VBuffer<T> dst) =>
    {
        var src = (T[])value();
        var editor = VBufferEditor.Create(ref dst, src.Length);
        src.CopyTo(editor.Values);
        dst = editor.Commit();
    };
}
