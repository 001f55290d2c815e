namespace CMoE.Modeling.IO;

/// <summary>Writes a folder under a temporary name beside the target and swaps it into place.</summary>
public static class AtomicFolder
{
    /// <summary>
    /// Calls <paramref name="fill"/> with an empty temporary folder; when it returns, the previous
    /// <paramref name="target"/> (if any) is replaced by it. If <paramref name="fill"/> throws, the
    /// temporary folder is deleted and the previous target stays untouched. Two writers must not target the
    /// same folder at once (each removes the other's leftovers).
    /// </summary>
    public static void Write(string target, Action<string> fill)
    {
        string full = Path.GetFullPath(target.TrimEnd('/', '\\'));
        if (File.Exists(full)) throw new IOException($"'{target}' is a file; the output must be a folder path.");
        string parent = Path.GetDirectoryName(full) ?? throw new IOException($"'{target}' has no parent folder.");
        Directory.CreateDirectory(parent);
        string name = Path.GetFileName(full);
        RemoveLeftovers(parent, name);
        string tmp = Path.Combine(parent, $".{name}.tmp-{Guid.NewGuid():N}");
        string old = Path.Combine(parent, $".{name}.old-{Guid.NewGuid():N}");
        Directory.CreateDirectory(tmp);
        try
        {
            fill(tmp);
            if (Directory.Exists(full)) Directory.Move(full, old);
            Directory.Move(tmp, full);
        }
        catch
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
            if (!Directory.Exists(full) && Directory.Exists(old)) Directory.Move(old, full);
            throw;
        }
        if (Directory.Exists(old)) Directory.Delete(old, recursive: true);
    }

    /// <summary>
    /// Deletes temporary folders a killed earlier write of the same target left behind (a process killed
    /// mid-write cannot clean up; the target itself was never touched). An ".old" folder is restored as the
    /// target if the kill came between moving the previous output aside and moving the new one in.
    /// </summary>
    private static void RemoveLeftovers(string parent, string name)
    {
        string full = Path.Combine(parent, name);
        foreach (var dir in Directory.EnumerateDirectories(parent, $".{name}.old-*"))
        {
            if (!Directory.Exists(full)) Directory.Move(dir, full);
            else Directory.Delete(dir, recursive: true);
        }
        foreach (var dir in Directory.EnumerateDirectories(parent, $".{name}.tmp-*"))
            Directory.Delete(dir, recursive: true);
    }
}
