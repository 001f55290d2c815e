using TorchSharp;

namespace CMoE.Tests;

/// <summary>Pins libtorch to one thread for every test (CI has 2 cores; see platform-notes).</summary>
internal static class TorchTestSetup
{
    private static int _done;

    /// <summary>Call at the start of any test that uses torch.</summary>
    public static void Pin()
    {
        if (Interlocked.Exchange(ref _done, 1) == 0)
        {
            torch.set_num_threads(1);
        }
    }
}
