using CMoE.Modeling;
using static TorchSharp.torch;

namespace CMoE.MLNet.Scoring;

/// <summary>The outputs of one row (see <see cref="ScoringOptions"/> for their definitions).</summary>
internal sealed record RowScore(float Perplexity, float LogLikelihood, float[] Embedding, float[] LabelScores);

/// <summary>
/// Scores texts with a language model: perplexity, log-likelihood, pooled embedding, label continuation scores.
/// Sequences are sorted by length and run in groups padded on the right (causal attention never lets a token see
/// the padding after it, and every FFN/MoE block works per token, so padding changes nothing but float rounding).
/// </summary>
internal sealed class TextScorer(LanguageModelHandle handle, ScoringSettings settings)
{
    /// <summary>Tokens per forward pass (rows x padded length) beyond which a group is split.</summary>
    private const int TokensPerForward = 8192;

    /// <summary>Embedding width for the settings' pooling.</summary>
    public int EmbeddingSize => settings.Pooling == EmbeddingPooling.MeanMax ? 2 * handle.Model.Config.HiddenSize : handle.Model.Config.HiddenSize;

    /// <summary>Number of BOS tokens the tokenizer puts in front (0 or 1).</summary>
    private int BosCount => handle.Tokenizer.Encode("", addBos: true).Length;

    /// <summary>Encodes a row: BOS + text, cut to MaxTokens.</summary>
    public int[] Encode(string text)
    {
        var ids = handle.Tokenizer.Encode(text ?? "", addBos: true);
        return ids.Length > settings.MaxTokens ? ids[..settings.MaxTokens] : ids;
    }

    /// <summary>Scores a batch of texts.</summary>
    public RowScore[] Score(IReadOnlyList<string> texts)
    {
        int bos = BosCount;
        var rows = texts.Select(Encode).ToArray();
        var logLik = new double[rows.Length];
        var embeddings = new float[rows.Length][];
        using var noGrad = no_grad();
        // Text pass: log-likelihood of tokens 1..n-1, embedding over tokens bos..n-1.
        bool needHidden = settings.EmbeddingColumn is not null;
        if (settings.NeedsLikelihood || needHidden)
            Run(rows, Enumerable.Repeat(1, rows.Length).ToArray(), settings.NeedsLikelihood, needHidden ? bos : -1, logLik, embeddings);

        var labelScores = new float[rows.Length][];
        if (settings.Labels.Length > 0)
        {
            var labelIds = settings.Labels.Select(l => handle.Tokenizer.Encode(l, addBos: false)).ToArray();
            var seqs = new List<int[]>();
            var from = new List<int>();
            foreach (var row in rows)
                foreach (var label in labelIds)
                {
                    seqs.Add([.. row, .. label]);
                    from.Add(row.Length);
                }
            var sums = new double[seqs.Count];
            Run([.. seqs], [.. from], likelihood: true, poolFrom: -1, sums, null);
            for (int r = 0; r < rows.Length; r++)
                labelScores[r] = Enumerable.Range(0, labelIds.Length).Select(k => (float)sums[r * labelIds.Length + k]).ToArray();
        }

        var result = new RowScore[rows.Length];
        for (int r = 0; r < rows.Length; r++)
        {
            int predicted = rows[r].Length - 1;                                             // tokens 1..n-1
            float ll = predicted <= 0 ? 0f : (float)logLik[r];
            float ppl = predicted <= 0 ? float.NaN : (float)Math.Exp(-logLik[r] / predicted);
            result[r] = new RowScore(ppl, ll, embeddings[r] ?? new float[EmbeddingSize], labelScores[r] ?? []);
        }
        return result;
    }

    /// <summary>
    /// Runs <paramref name="seqs"/> in length-sorted padded groups. When <paramref name="likelihood"/>, adds to
    /// <paramref name="sums"/>[i] the log-probability of tokens from[i]..n-1 of sequence i; when
    /// <paramref name="poolFrom"/> &gt;= 0, pools the final hidden states of tokens poolFrom..n-1 into
    /// <paramref name="embeddings"/>[i] (left null when there are none).
    /// </summary>
    private void Run(int[][] seqs, int[] from, bool likelihood, int poolFrom, double[] sums, float[][]? embeddings)
    {
        var order = Enumerable.Range(0, seqs.Length).OrderBy(i => seqs[i].Length).ToArray();
        int start = 0;
        while (start < order.Length)
        {
            int end = start + 1;
            while (end < order.Length && (end - start + 1) * seqs[order[end]].Length <= TokensPerForward) end++;
            RunGroup(seqs, from, order[start..end], likelihood, poolFrom, sums, embeddings);
            start = end;
        }
    }

    private void RunGroup(int[][] seqs, int[] from, int[] group, bool likelihood, int poolFrom, double[] sums, float[][]? embeddings)
    {
        using var scope = NewDisposeScope();
        int b = group.Length, t = group.Max(i => seqs[i].Length);
        long pad = handle.Tokenizer.EosId ?? 0;
        var ids = new long[b, t];
        var lengths = new long[b];
        for (int r = 0; r < b; r++)
        {
            var s = seqs[group[r]];
            lengths[r] = s.Length;
            for (int j = 0; j < t; j++) ids[r, j] = j < s.Length ? s[j] : pad;
        }
        var model = handle.Model;
        var idsT = tensor(ids);                                                              // [b, t]
        var hidden = model.Hidden(idsT).to(ScalarType.Float32);                               // [b, t, d]
        var positions = arange(Scalars.Of(0L), Scalars.Of((long)t), Scalars.Of(1L), dtype: ScalarType.Int64).unsqueeze(0); // [1, t]
        var len = tensor(lengths).unsqueeze(1);                                               // [b, 1]

        if (likelihood && t > 1)
        {
            var logits = model.Logits(hidden.narrow(1, 0, t - 1)).to(ScalarType.Float32);     // [b, t-1, V]
            var targets = idsT.narrow(1, 1, t - 1).unsqueeze(-1);                             // [b, t-1, 1]
            var logp = logits.log_softmax(-1).gather(-1, targets).squeeze(-1);               // [b, t-1]
            var fromT = tensor(group.Select(i => (long)from[i]).ToArray()).unsqueeze(1);     // [b, 1]
            var target = positions.narrow(1, 1, t - 1);                                       // [1, t-1] position of each target
            var mask = target.ge(fromT).logical_and(target.lt(len));                          // [b, t-1]
            var rowSums = (logp.to(ScalarType.Float64) * mask.to(ScalarType.Float64)).sum(1); // [b]
            var values = rowSums.data<double>().ToArray();
            for (int r = 0; r < b; r++) sums[group[r]] += values[r];
        }
        if (poolFrom >= 0 && embeddings is not null)
        {
            using var first = Scalars.Owned(poolFrom);
            var mask = positions.ge(first).logical_and(positions.lt(len)).unsqueeze(-1);      // [b, t, 1]
            var count = mask.sum(1).to(ScalarType.Float32);                                   // [b, 1]
            var mean = (hidden * mask.to(ScalarType.Float32)).sum(1) / count.clamp_min(Scalars.One);    // [b, d]
            var pooled = settings.Pooling == EmbeddingPooling.MeanMax
                ? cat([mean, hidden.masked_fill(mask.logical_not(), Scalars.NegativeInfinity).amax(1)], 1) // [b, 2d]
                : mean;
            var counts = count.squeeze(1).data<float>().ToArray();
            var flat = pooled.contiguous().data<float>().ToArray();
            int width = (int)pooled.shape[1];
            for (int r = 0; r < b; r++)
                if (counts[r] > 0) embeddings[group[r]] = flat.AsSpan(r * width, width).ToArray();
        }
    }
}
