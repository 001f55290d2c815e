using CMoE.MLNet.Persistence;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;

namespace CMoE.MLNet.Data;

/// <summary>
/// Base of CMoE transformers that append computed columns to each row: schema propagation with clear errors for
/// missing or mistyped inputs, a lazy (optionally batched) <see cref="IDataView"/> cursor, an
/// <see cref="IRowToRowMapper"/> so <c>PredictionEngine</c> works, and saving through the model-zip bridge.
/// Only CMoE.MLNet derives from it.
/// </summary>
public abstract class RowMapperTransformerBase : ITransformer
{
    private protected RowMapperTransformerBase(IHostEnvironment env, string name)
    {
        ArgumentNullException.ThrowIfNull(env);
        Host = env.Register(name);
        Name = name;
    }

    /// <summary>The host (channels, exceptions) registered under the transformer's name.</summary>
    private protected IHost Host { get; }

    /// <summary>Names the transformer in messages.</summary>
    private protected string Name { get; }

    /// <summary>The input columns <see cref="MapBatch"/> reads, in the order it receives their values.</summary>
    private protected abstract IReadOnlyList<InputColumn> InputColumns { get; }

    /// <summary>The columns appended to each row, in the order <see cref="MapBatch"/> produces their values.</summary>
    private protected abstract IReadOnlyList<(string Name, DataViewType Type)> OutputColumns { get; }

    /// <summary>Annotations of output column <paramref name="name"/> (e.g. a predicted label's key values); null for none.</summary>
    private protected virtual DataViewSchema.Annotations? OutputAnnotations(string name) => null;

    /// <summary>Rows computed together by the <see cref="IDataView"/> cursor (1 = one row at a time, lazily).</summary>
    private protected virtual int BatchSize => 1;

    /// <summary>
    /// Computes the outputs of a batch of rows. <paramref name="inputs"/>[r][i] is the value of
    /// <see cref="InputColumns"/>[i] in row r (see <see cref="ColumnValues"/> for the value shapes);
    /// fill <paramref name="outputs"/>[r][o] for each of <see cref="OutputColumns"/>. Called on the cursor's thread.
    /// </summary>
    private protected abstract void MapBatch(IReadOnlyList<object[]> inputs, object[][] outputs);

    /// <summary>Builds what <c>Model.Save</c> stores (via <see cref="MlNetBridge.Save"/>).</summary>
    private protected abstract ModelPayload CreatePayload();

    /// <summary>Always true: the transformer maps each row independently.</summary>
    public bool IsRowToRowMapper => true;

    /// <summary>The input schema plus the appended columns; throws naming a missing or mistyped input column.</summary>
    /// <param name="inputSchema">Schema of the data to transform.</param>
    public DataViewSchema GetOutputSchema(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        foreach (var input in InputColumns) input.Find(inputSchema, Name);
        var builder = new DataViewSchema.Builder();
        builder.AddColumns(inputSchema);
        foreach (var (name, type) in OutputColumns) builder.AddColumn(name, type, OutputAnnotations(name));
        return builder.ToSchema();
    }

    /// <summary>Returns a lazy view of <paramref name="input"/> with the output columns appended.</summary>
    /// <param name="input">Data to transform.</param>
    public IDataView Transform(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        return new MappedDataView(new Binding(this, input.Schema), input);
    }

    /// <summary>A row-to-row mapper over <paramref name="inputSchema"/>, as <c>PredictionEngine</c> uses.</summary>
    /// <param name="inputSchema">Schema of the rows to map.</param>
    public IRowToRowMapper GetRowToRowMapper(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        return new Mapper(new Binding(this, inputSchema));
    }

    void ICanSaveModel.Save(ModelSaveContext ctx) => MlNetBridge.Save(ctx, CreatePayload());

    /// <summary>The transformer bound to one input schema: column indices and the output schema.</summary>
    private sealed class Binding
    {
        public Binding(RowMapperTransformerBase owner, DataViewSchema inputSchema)
        {
            Owner = owner;
            InputSchema = inputSchema;
            Inputs = owner.InputColumns.Select(c => c.Find(inputSchema, owner.Name)).ToArray();
            OutputSchema = owner.GetOutputSchema(inputSchema);
        }

        public RowMapperTransformerBase Owner { get; }
        public DataViewSchema InputSchema { get; }
        public DataViewSchema OutputSchema { get; }
        public DataViewSchema.Column[] Inputs { get; }
        public int OutputCount => OutputSchema.Count - InputSchema.Count;

        /// <summary>Whether output column <paramref name="index"/> (in <see cref="OutputSchema"/>) is computed here.</summary>
        public bool IsOutput(int index) => index >= InputSchema.Count;

        /// <summary>Input columns needed to produce <paramref name="columns"/> of the output schema.</summary>
        public IEnumerable<DataViewSchema.Column> Dependencies(IEnumerable<DataViewSchema.Column> columns)
        {
            var needed = new HashSet<int>();
            bool anyOutput = false;
            foreach (var c in columns)
            {
                if (IsOutput(c.Index)) anyOutput = true;
                else needed.Add(c.Index);
            }
            if (anyOutput)
                foreach (var c in Inputs) needed.Add(c.Index);
            return needed.Order().Select(i => InputSchema[i]);
        }

        public object[][] Compute(IReadOnlyList<object[]> inputs)
        {
            var outputs = new object[inputs.Count][];
            for (int r = 0; r < outputs.Length; r++) outputs[r] = new object[OutputCount];
            Owner.MapBatch(inputs, outputs);
            return outputs;
        }

        public Func<object>[] Readers(DataViewRow row) => Array.ConvertAll(Inputs, c => ColumnValues.Reader(row, c));

        public ValueGetter<TValue> OutputGetter<TValue>(DataViewSchema.Column column, Func<object[]> current)
        {
            int o = column.Index - InputSchema.Count;
            var getter = ColumnValues.Getter(column.Type, () => current()[o]);
            return getter as ValueGetter<TValue> ?? throw new InvalidOperationException(
                $"{Owner.Name}: column '{column.Name}' is {column.Type}; it cannot be read as {typeof(TValue).Name}.");
        }
    }

    /// <summary>Maps single rows for PredictionEngine and TransformerChain; computes once per input position.</summary>
    private sealed class Mapper(Binding binding) : IRowToRowMapper
    {
        public DataViewSchema InputSchema => binding.InputSchema;
        public DataViewSchema OutputSchema => binding.OutputSchema;

        public IEnumerable<DataViewSchema.Column> GetDependencies(IEnumerable<DataViewSchema.Column> dependingColumns) =>
            binding.Dependencies(dependingColumns);

        public DataViewRow GetRow(DataViewRow input, IEnumerable<DataViewSchema.Column> activeColumns) =>
            new MappedRow(binding, input, activeColumns);
    }

    private sealed class MappedRow : DataViewRow
    {
        private readonly Binding _binding;
        private readonly DataViewRow _input;
        private readonly bool[] _active;
        private readonly Func<object>[]? _readers;
        private long _computedAt = -1;
        private object[] _outputs = [];

        public MappedRow(Binding binding, DataViewRow input, IEnumerable<DataViewSchema.Column> activeColumns)
        {
            _binding = binding;
            _input = input;
            _active = new bool[binding.OutputSchema.Count];
            foreach (var c in activeColumns) _active[c.Index] = true;
            if (_active.Where((a, i) => a && binding.IsOutput(i)).Any()) _readers = binding.Readers(input);
        }

        public override DataViewSchema Schema => _binding.OutputSchema;
        public override long Position => _input.Position;
        public override long Batch => _input.Batch;
        public override ValueGetter<DataViewRowId> GetIdGetter() => _input.GetIdGetter();
        public override bool IsColumnActive(DataViewSchema.Column column) => _active[column.Index];

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
        {
            if (!_active[column.Index])
                throw new InvalidOperationException($"{_binding.Owner.Name}: column '{column.Name}' is not active in this row.");
            if (!_binding.IsOutput(column.Index)) return _input.GetGetter<TValue>(_binding.InputSchema[column.Index]);
            return _binding.OutputGetter<TValue>(column, Current);
        }

        private object[] Current()
        {
            if (_computedAt != _input.Position || _input.Position < 0)
            {
                var values = Array.ConvertAll(_readers!, read => read());
                _outputs = _binding.Compute([values])[0];
                _computedAt = _input.Position;
            }
            return _outputs;
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing) _input.Dispose();
            base.Dispose(disposing);
        }
    }

    /// <summary>
    /// The transformer that produced <paramref name="data"/> (through <see cref="Transform"/>) or any view it was
    /// built on, nearest first, that is a <typeparamref name="T"/>; null when none. Lets an estimator chained after
    /// another (<c>EstimatorChain.Fit</c> passes the previous transformer's output) find that transformer's state.
    /// </summary>
    private protected static T? FindProducer<T>(IDataView data) where T : RowMapperTransformerBase
    {
        for (var view = data as MappedDataView; view is not null; view = view.Input as MappedDataView)
            if (view.Producer is T found) return found;
        return null;
    }

    /// <summary>The lazy view returned by <see cref="Transform"/>.</summary>
    private sealed class MappedDataView(Binding binding, IDataView input) : IDataView
    {
        public RowMapperTransformerBase Producer => binding.Owner;
        public IDataView Input => input;

        public DataViewSchema Schema => binding.OutputSchema;
        public bool CanShuffle => false;
        public long? GetRowCount() => input.GetRowCount();

        public DataViewRowCursor GetRowCursor(IEnumerable<DataViewSchema.Column> columnsNeeded, Random? rand = null)
        {
            var needed = columnsNeeded.ToArray();
            var inputColumns = binding.Dependencies(needed).ToArray();
            bool anyOutput = needed.Any(c => binding.IsOutput(c.Index));
            var main = input.GetRowCursor(inputColumns);
            // Batching reads ahead on a second cursor so pass-through columns still come from the current row.
            var ahead = anyOutput && binding.Owner.BatchSize > 1 ? input.GetRowCursor(binding.Inputs) : null;
            return new Cursor(binding, main, ahead, needed, anyOutput);
        }

        public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null) =>
            [GetRowCursor(columnsNeeded, rand)];
    }

    private sealed class Cursor : DataViewRowCursor
    {
        private readonly Binding _binding;
        private readonly DataViewRowCursor _input;
        private readonly DataViewRowCursor? _ahead;
        private readonly bool[] _active;
        private readonly Func<object>[]? _readers;
        private readonly int _batchSize;
        private object[][] _batch = [];
        private int _inBatch = -1;
        private long _computedAt = -1;

        public Cursor(Binding binding, DataViewRowCursor input, DataViewRowCursor? ahead, IEnumerable<DataViewSchema.Column> active, bool anyOutput)
        {
            _binding = binding;
            _input = input;
            _ahead = ahead;
            _batchSize = Math.Max(1, binding.Owner.BatchSize);
            _active = new bool[binding.OutputSchema.Count];
            foreach (var c in active) _active[c.Index] = true;
            if (anyOutput) _readers = binding.Readers(ahead ?? input);
        }

        public override DataViewSchema Schema => _binding.OutputSchema;
        public override long Position => _input.Position;
        public override long Batch => _input.Batch;
        public override ValueGetter<DataViewRowId> GetIdGetter() => _input.GetIdGetter();
        public override bool IsColumnActive(DataViewSchema.Column column) => _active[column.Index];

        public override bool MoveNext()
        {
            if (!_input.MoveNext()) return false;
            if (_ahead is not null && ++_inBatch >= _batch.Length) FillBatch();
            return true;
        }

        /// <summary>Reads up to BatchSize rows on the look-ahead cursor (it is never behind the main one) and maps them.</summary>
        private void FillBatch()
        {
            var rows = new List<object[]>(_batchSize);
            while (rows.Count < _batchSize && _ahead!.MoveNext())
                rows.Add(Array.ConvertAll(_readers!, read => read()));
            if (rows.Count == 0)
                throw new InvalidOperationException($"{_binding.Owner.Name}: the input returned fewer rows on a second cursor; it must be re-readable in the same order.");
            _batch = _binding.Compute(rows);
            _inBatch = 0;
        }

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
        {
            if (!_active[column.Index])
                throw new InvalidOperationException($"{_binding.Owner.Name}: column '{column.Name}' was not requested from this cursor.");
            if (!_binding.IsOutput(column.Index)) return _input.GetGetter<TValue>(_binding.InputSchema[column.Index]);
            return _binding.OutputGetter<TValue>(column, Current);
        }

        private object[] Current()
        {
            if (_input.Position < 0) throw new InvalidOperationException("The cursor is not on a row; call MoveNext first.");
            if (_ahead is not null) return _batch[_inBatch];
            if (_computedAt != _input.Position)
            {
                _batch = _binding.Compute([Array.ConvertAll(_readers!, read => read())]);
                _computedAt = _input.Position;
            }
            return _batch[0];
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                _input.Dispose();
                _ahead?.Dispose();
            }
            base.Dispose(disposing);
        }
    }
}
