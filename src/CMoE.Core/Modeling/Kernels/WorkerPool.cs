namespace CMoE.Modeling.Kernels;

/// <summary>
/// Persistent worker threads for the managed CPU kernels: a decode step runs dozens of small matrix products, and a
/// fork-join per product (Parallel.For) costs more than a small product itself. The caller publishes a job (a static
/// function over a range of items and a pointer to its arguments), takes the first share itself, and waits for the workers,
/// which spin briefly between jobs (so the products of one step reach them at once) and then sleep.
/// One job at a time: a caller that finds the pool busy (another scoring thread) runs its job alone, so concurrent callers
/// never wait for each other. Sized by <see cref="Configure"/> (the CLI's and options' thread count).
/// </summary>
internal sealed unsafe class WorkerPool
{
    /// <summary>The process's pool (one thread until <see cref="Configure"/> is called).</summary>
    public static WorkerPool Shared { get; private set; } = new(1);

    private static readonly object ConfigureGate = new();

    /// <summary>Replaces <see cref="Shared"/> by a pool of <paramref name="threads"/> threads (the caller counts as one).</summary>
    public static void Configure(int threads)
    {
        threads = Math.Clamp(threads, 1, Environment.ProcessorCount * 2);
        lock (ConfigureGate)
        {
            if (Shared.Threads == threads) return;
            var old = Shared;
            Shared = new WorkerPool(threads);
            old.Stop();
        }
    }

    /// <summary>
    /// How long a worker spins between jobs before it sleeps: the gaps between the products of one decode step are a few
    /// microseconds, while a longer spin steals the core from libtorch's own threads during prefill (a clock, not a count:
    /// one pause instruction takes 10 cycles on one CPU and 140 on another).
    /// </summary>
    private static readonly long SpinTicks = System.Diagnostics.Stopwatch.Frequency / 20_000;   // 50 us

    private readonly Thread[] _workers;
    private readonly SemaphoreSlim _wake = new(0);
    private int _sleeping;
    private int _busy;
    private volatile bool _stop;

    // The current job: body(args, start, end) over [0, items) cut into Threads shares, share k for participant k.
    private delegate*<void*, int, int, void> _body;
    private void* _args;
    private int _items, _shares, _granularity;
    private long _generation;
    private int _pending;
    private Exception? _error;                 // thrown by a worker's share; rethrown to the caller

    private WorkerPool(int threads)
    {
        Threads = threads;
        _workers = new Thread[threads - 1];
        for (int i = 0; i < _workers.Length; i++)
        {
            int participant = i + 1;
            _workers[i] = new Thread(() => Work(participant)) { IsBackground = true, Name = $"cmoe-kernel-{participant}" };
            _workers[i].Start();
        }
    }

    /// <summary>Threads that share a job, the caller included.</summary>
    public int Threads { get; }

    /// <summary>
    /// Runs <paramref name="body"/>(args, start, end) over [0, <paramref name="items"/>) split into contiguous shares whose
    /// boundaries are multiples of <paramref name="granularity"/>, one per thread, on at most <paramref name="maxThreads"/>
    /// threads; returns when all shares are done. Runs on the caller alone when one thread is enough or the pool is busy.
    /// </summary>
    public void Run(delegate*<void*, int, int, void> body, void* args, int items, int granularity = 1, int maxThreads = int.MaxValue)
    {
        int shares = Math.Min(Math.Min(Threads, maxThreads), (items + granularity - 1) / Math.Max(granularity, 1));
        if (shares <= 1 || Interlocked.CompareExchange(ref _busy, 1, 0) != 0)
        {
            body(args, 0, items);
            return;
        }
        try
        {
            _body = body;
            _args = args;
            _items = items;
            _shares = shares;
            _granularity = granularity;
            Volatile.Write(ref _pending, Threads - 1);               // every worker takes part (some with an empty share), so none lags into the next job
            Interlocked.Increment(ref _generation);                 // publishes the job
            int sleeping = Volatile.Read(ref _sleeping);
            if (sleeping > 0) _wake.Release(sleeping);
            var (start, end) = Share(0);
            body(args, start, end);
            var spin = new SpinWait();
            while (Volatile.Read(ref _pending) > 0) spin.SpinOnce(-1);
            if (Interlocked.Exchange(ref _error, null) is { } error)
                throw new InvalidOperationException("A kernel worker failed.", error);
        }
        finally
        {
            Volatile.Write(ref _busy, 0);
        }
    }

    /// <summary>The item range of share <paramref name="k"/> of the current job.</summary>
    private (int Start, int End) Share(int k)
    {
        if (k >= _shares) return (0, 0);
        int units = (_items + _granularity - 1) / _granularity;
        int per = units / _shares, extra = units % _shares;
        int startUnit = k * per + Math.Min(k, extra), endUnit = startUnit + per + (k < extra ? 1 : 0);
        return (Math.Min(_items, startUnit * _granularity), Math.Min(_items, endUnit * _granularity));
    }

    private void Work(int participant)
    {
        long seen = 0;
        while (true)
        {
            long generation;
            long spinUntil = System.Diagnostics.Stopwatch.GetTimestamp() + SpinTicks;
            while ((generation = Volatile.Read(ref _generation)) == seen)
            {
                if (_stop) return;
                if (System.Diagnostics.Stopwatch.GetTimestamp() < spinUntil) { Thread.SpinWait(4); continue; }
                Interlocked.Increment(ref _sleeping);
                if (Volatile.Read(ref _generation) == seen && !_stop) _wake.Wait(10);
                Interlocked.Decrement(ref _sleeping);
                spinUntil = System.Diagnostics.Stopwatch.GetTimestamp() + SpinTicks;
            }
            seen = generation;
            var (start, end) = Share(participant);
            try
            {
                if (start < end) _body(_args, start, end);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _error, e, null);
            }
            Interlocked.Decrement(ref _pending);
        }
    }

    private void Stop()
    {
        _stop = true;
        if (_workers.Length > 0) _wake.Release(_workers.Length);
    }
}
