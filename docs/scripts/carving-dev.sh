#!/usr/bin/env bash
# Development loop for carving options (issue #16): carves tinyref-llama with each option set and evaluates on a
# development text that calibration never samples: sotu_train.txt characters [229863, 785008) (line-aligned), which
# lies inside the first 254,739 tokens of the stream, a range no calibration window of seeds 0-3 (8 x 512) touches.
# Usage: bash docs/scripts/carving-dev.sh <work-dir> <windows> <layout> "<variant name>:<carve options>" ...
#   e.g. bash docs/scripts/carving-dev.sh /tmp/dev 64 S2A2E16 "base:" "thr:--routing threshold"
# Prints variant,layout,dev_ppl,mean_active_fraction,max_active_fraction. Needs a Release build of src/CMoE.Cli.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
shared=${SHARED:-$root/../shared}
work=$1; windows=$2; layout=$3; shift 3
mkdir -p "$work"
cmoe="dotnet $root/src/CMoE.Cli/bin/Release/net10.0/cmoe.dll"
dev=$work/dev.txt
[ -f "$dev" ] || python3 -c "
t=open('$shared/data/eval/sotu_train.txt',encoding='utf-8').read()
a=t.index('\n',200000)+1; b=t.index('\n',750000)+1
assert (a, b) == (229863, 785008), (a, b)
open('$dev','w',encoding='utf-8').write(t[a:b])"
for spec in "$@"; do
  name=${spec%%:*}; opts=${spec#*:}
  out=$work/$name-$layout
  # shellcheck disable=SC2086
  $cmoe carve --model "$root/models/tinyref-llama" --calibration "$shared/data/eval/sotu_train.txt" --layout "$layout" \
    --samples 8 --seq-len 512 --seed "${SEED:-0}" --threads 1 $opts --out "$out" --json >/dev/null
  r=$($cmoe eval --model "$out" --text "$dev" --max-windows "$windows" --threads 1 --json)
  ppl=$(echo "$r" | grep '"perplexity"' | grep -oE '[0-9.]+')
  mean=$(echo "$r" | grep '"mean_active_fraction"' | grep -oE '[0-9.]+')
  max=$(echo "$r" | grep '"max_active_fraction"' | grep -oE '[0-9.]+')
  echo "$name,$layout,$ppl,$mean,$max"
  rm -rf "$out"
done
