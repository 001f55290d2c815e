#!/usr/bin/env bash
# The build-machine half of the one-command GPU check (issue 17; docs/benchmarks.md, "GPU check").
#
#   bash scripts/gpu-check/pack.sh            -> device/gpu-check.tar.xz (git-ignored; fails if >= 60 MiB)
#
# Publishes the cmoe CLI self-contained for linux-x64 WITHOUT libtorch-cpu's natives (-p:CMoENoLibTorch=true; only
# TorchSharp's libLibTorchSharp.so stays: the GPU machine brings its own CUDA libtorch), with the framework's trimmable
# assemblies trimmed (-p:CMoETrimPublish=true, TrimMode partial; CMOE_GPU_PACK_TRIM=0 for none), drops runtime files the check
# never loads, and packs the CLI, models/tinyref-llama, the texts and the SpamScoring TSV and the on-device script
# (scripts/gpu-check/run.sh) into one tar.xz. On the device: tar -xJf gpu-check.tar.xz && bash gpu-check/run.sh
#
# Environment: CMOE_GPU_PACK_DIR (default device) the output folder; CMOE_SHARED (default ../shared) the shared data;
# CMOE_GPU_PACK_TRIM=0 publishes untrimmed; CMOE_GPU_PACK_NO_PUBLISH=1 reuses $CMOE_GPU_PACK_DIR/publish as it is (for quick repacks).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dir=${CMOE_GPU_PACK_DIR:-device}
shared=${CMOE_SHARED:-../shared}
archive=$dir/gpu-check.tar.xz
limit_mib=60
t0=$(date +%s)

data=("$shared/data/eval/sotu_train.txt" "$shared/data/eval/sotu_val.txt" "$shared/data/corpora/moby_dick.txt")
for f in "${data[@]}" samples/SpamScoring/data/*.tsv models/tinyref-llama/config.json; do
  [ -f "$f" ] || { echo "pack.sh: missing input $f" >&2; exit 1; }
done
mkdir -p "$dir"

# 1. Publish: self-contained, no libtorch-cpu. The normal build is unchanged by these properties (trimming adds the
#    ILLink package to the CLI's restore for this publish only; the next normal build restores as before).
if [ "${CMOE_GPU_PACK_NO_PUBLISH:-0}" != 1 ] || [ ! -x "$dir/publish/cmoe" ]; then
  rm -rf "$dir/publish"
  # CMoETrimPublish: the framework's trimmable assemblies trimmed (TrimMode partial; src/CMoE.Cli/CMoE.Cli.csproj):
  # about 27 -> 15 MiB packed. CMOE_GPU_PACK_TRIM=0 publishes untrimmed (about 57 MiB archive in all).
  trim=true; [ "${CMOE_GPU_PACK_TRIM:-1}" = 0 ] && trim=false
  dotnet publish src/CMoE.Cli -c Release -r linux-x64 --self-contained -p:CMoENoLibTorch=true -p:CMoETrimPublish=$trim \
    -o "$dir/publish" -v minimal
fi

# 2. Stage: gpu-check/{run.sh, MANIFEST.txt, cli/, models/tinyref-llama/, data/}.
stage=$dir/stage
rm -rf "$stage"
root=$stage/gpu-check
mkdir -p "$root/cli" "$root/models" "$root/data"
cp -a "$dir/publish/." "$root/cli/"
# Trims that are safe for this check (nothing in it loads them): the debugger/dump support (libmscordaccore,
# libmscordbi, createdump), LTTng tracing, the standalone GCs (only with DOTNET_GCName), and SkiaSharp/HarfBuzz's
# natives (only `cmoe sweep` draws its PNG with them; sweep is not part of the check). Every other file stays.
for f in libmscordaccore.so libmscordbi.so createdump libcoreclrtraceptprovider.so libclrgc.so libclrgcexp.so \
         libSkiaSharp.so libHarfBuzzSharp.so; do
  rm -f "$root/cli/$f"
done
if find "$root/cli" -name 'libtorch*.so' -o -name 'libc10*.so' | grep -q .; then
  echo "pack.sh: a libtorch library is in the publish output; -p:CMoENoLibTorch=true did not take" >&2; exit 1
fi
[ -f "$root/cli/libLibTorchSharp.so" ] || { echo "pack.sh: libLibTorchSharp.so is missing from the publish output" >&2; exit 1; }
cp -a models/tinyref-llama "$root/models/"
cp "${data[@]}" samples/SpamScoring/data/*.tsv "$root/data/"
install -m 0755 scripts/gpu-check/run.sh "$root/run.sh"
{
  echo "gpu-check archive (scripts/gpu-check/pack.sh)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "branch: $(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)"
  echo "packed: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n)"
  echo "cmoe: $("$root/cli/cmoe" --version 2>/dev/null || echo '?')"
  echo "run: tar -xJf gpu-check.tar.xz && bash gpu-check/run.sh   (OUT=<folder> for the outputs, default ./out)"
  echo
  (cd "$stage" && find gpu-check -type f -printf '%s\t%p\n' | sort -k2)
} > "$root/MANIFEST.txt"

# 3. Pack and check the size.
rm -f "$archive"
XZ_OPT=${XZ_OPT:--6 -T0} tar -cJf "$archive" -C "$stage" gpu-check
bytes=$(stat -c %s "$archive")
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
unpacked=$(du -sm "$root" | cut -f1)
rm -rf "$stage"
echo "pack.sh: $archive: $bytes bytes ($mib MiB; unpacked ${unpacked} MiB; limit ${limit_mib} MiB) in $(( $(date +%s) - t0 )) s"
if [ "$bytes" -ge $(( limit_mib * 1048576 )) ]; then
  echo "pack.sh: the archive is $mib MiB, not under ${limit_mib} MiB (the tree that travels is limited to 64 MiB)" >&2
  exit 1
fi
