namespace CMoE.Modeling.Tokenization;

/// <summary>
/// The BPE merge loop of <see cref="BpeModel"/> (tokenizer.json BPE, byte-level and SentencePiece-style alike):
/// the word's symbols as a doubly linked list, the adjacent pair with the lowest merge rank
/// merged first (leftmost among equal ranks), as Hugging Face tokenizers' BPE model does.
/// </summary>
internal static class BpeMerges
{
    /// <summary>The key of the pair (left, right) in a merge table.</summary>
    private static long Key(int left, int right) => ((long)left << 32) | (uint)right;

    /// <summary>
    /// The merge table of a tokenizer.json's <c>model.merges</c>: pair key -> (rank, merged id); the first of repeated pairs wins.
    /// </summary>
    /// <exception cref="CMoEFormatException">A merge names a token missing from <c>model.vocab</c>; <paramref name="fix"/>
    /// ends the message.</exception>
    public static Dictionary<long, (int Rank, int Merged)> Table(IReadOnlyList<(string Left, string Right)> merges,
        Dictionary<string, int> vocab, string sourcePath, string fix)
    {
        var table = new Dictionary<long, (int, int)>(merges.Count);
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var (left, right) = merges[rank];
            if (!vocab.TryGetValue(left, out int l) || !vocab.TryGetValue(right, out int r) || !vocab.TryGetValue(left + right, out int merged))
                throw new CMoEFormatException($"{sourcePath}: merge #{rank} ('{left}' '{right}') uses a token missing from model.vocab. " +
                                              $"The file is inconsistent; {fix}");
            table.TryAdd(Key(l, r), (rank, merged));
        }
        return table;
    }

    /// <summary>
    /// Merges <paramref name="symId"/> in place (merged-away symbols become -1; a merged symbol's end in
    /// <paramref name="symEnd"/> becomes its right neighbour's) and returns the next-links of the remaining symbols: the
    /// first is symbol 0, the last links to -1.
    /// </summary>
    public static int[] Apply(List<int> symId, List<int> symEnd, Dictionary<long, (int Rank, int Merged)> merges)
    {
        int n = symId.Count;
        var prev = new int[n];
        var next = new int[n];
        for (int i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; }

        var queue = new PriorityQueue<(int Left, int Right, int LeftId, int RightId, int Merged), long>();
        for (int i = 0; i + 1 < n; i++) Push(i, i + 1);
        while (queue.TryDequeue(out var m, out _))
        {
            // Stale entries: a side was merged away or changed since the pair was queued.
            if (next[m.Left] != m.Right || symId[m.Left] != m.LeftId || symId[m.Right] != m.RightId) continue;
            symId[m.Left] = m.Merged;
            symEnd[m.Left] = symEnd[m.Right];
            symId[m.Right] = -1;
            next[m.Left] = next[m.Right];
            if (next[m.Right] >= 0) prev[next[m.Right]] = m.Left;
            next[m.Right] = -2;
            if (prev[m.Left] >= 0) Push(prev[m.Left], m.Left);
            if (next[m.Left] >= 0) Push(m.Left, next[m.Left]);
        }
        return next;

        void Push(int left, int right)
        {
            if (merges.TryGetValue(Key(symId[left], symId[right]), out var merge))
                queue.Enqueue((left, right, symId[left], symId[right], merge.Merged), ((long)merge.Rank << 32) | (uint)left);
        }
    }
}
