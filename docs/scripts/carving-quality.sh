#!/usr/bin/env bash
# Reproduces the "Carving quality" table of docs/benchmarks.md: carves tinyref-llama at three layouts
# with the default (cosine, 1 iteration), raw scores and 5 k-means iterations, then evaluates every
# carved model on sotu_val and moby_dick with `cmoe eval`.
# Usage: bash docs/scripts/carving-quality.sh [shared-dir] [work-dir]   (needs ../shared beside the repo)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
shared=${1:-$root/../shared}
work=${2:-$(mktemp -d)}
cmoe="dotnet $work/bin/cmoe.dll"
dotnet build -c Release "$root/src/CMoE.Cli" -o "$work/bin" >/dev/null
model=$root/models/tinyref-llama
echo "variant,layout,carve_seconds,sotu_val,moby_dick"
for variant in cosine raw iter5; do
  case $variant in
    cosine) extra=() ;;
    raw) extra=(--score raw) ;;
    iter5) extra=(--iterations 5) ;;
  esac
  for layout in S2A2E16 S3A3E8 S4A4E16; do
    out=$work/$variant-$layout
    carve=$($cmoe carve --model "$model" --calibration "$shared/data/eval/sotu_train.txt" --layout $layout \
      --samples 8 --seq-len 512 --seed 0 "${extra[@]}" --out "$out" --json)
    secs=$(echo "$carve" | grep -m1 '"seconds"' | grep -oE '[0-9.]+')
    val=$($cmoe eval --model "$out" --text "$shared/data/eval/sotu_val.txt" --json | grep '"perplexity"' | grep -oE '[0-9.]+')
    moby=$($cmoe eval --model "$out" --text "$shared/data/corpora/moby_dick.txt" --json | grep '"perplexity"' | grep -oE '[0-9.]+')
    echo "$variant,$layout,$secs,$val,$moby"
  done
done
