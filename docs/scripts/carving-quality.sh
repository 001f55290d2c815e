#!/usr/bin/env bash
# Reproduces the "Carving quality" table of docs/benchmarks.md: carves tinyref-llama at three layouts with each
# variant (authors = `--recipe authors`; then every option of issue #16 alone on top of the authors' procedure; chosen =
# the defaults, this library's recipe), then
# evaluates every carved model on sotu_val and moby_dick with `cmoe eval` (256 windows of 512 tokens, --threads 1).
# Usage: bash docs/scripts/carving-quality.sh [shared-dir] [work-dir] [variant ...]
#   variants: authors raw kact40 iter5 threshold mean downnorm downfit chosen (default: all); SEED=n for another seed;
#   LAYOUTS="S2A2E16 S3A3E8" to run fewer layouts.
# Prints variant,layout,seed,carve_seconds,sotu_val,moby_dick,val_mean_active,val_max_active,moby_mean_active,moby_max_active
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
shared=${1:-$root/../shared}
work=${2:-$(mktemp -d)}
shift $(( $# >= 2 ? 2 : $# ))
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(authors raw kact40 iter5 threshold mean downnorm downfit chosen)
seed=${SEED:-0}
mkdir -p "$work"
[ -f "$work/bin/cmoe.dll" ] || dotnet build -c Release "$root/src/CMoE.Cli" -o "$work/bin" >/dev/null
cmoe="dotnet $work/bin/cmoe.dll"
model=$root/models/tinyref-llama
field() { echo "$1" | grep "\"$2\"" | grep -oE '[0-9.]+' | head -1; }
echo "variant,layout,seed,carve_seconds,sotu_val,moby_dick,val_mean_active,val_max_active,moby_mean_active,moby_max_active"
for variant in "${variants[@]}"; do
  case $variant in
    authors) extra=(--recipe authors) ;;
    raw) extra=(--recipe authors --score raw) ;;
    kact40) extra=(--recipe authors --k-act 40) ;;
    iter5) extra=(--recipe authors --iterations 5) ;;
    threshold) extra=(--recipe authors --routing threshold) ;;
    mean) extra=(--recipe authors --router-vectors mean) ;;
    downnorm) extra=(--recipe authors --neuron-weighting downnorm) ;;
    downfit) extra=(--recipe authors --down-fit ridge) ;;
    chosen) extra=() ;;
    *) echo "unknown variant $variant" >&2; exit 2 ;;
  esac
  for layout in ${LAYOUTS:-S2A2E16 S3A3E8 S4A4E16}; do
    out=$work/$variant-$layout-$seed
    carve=$($cmoe carve --model "$model" --calibration "$shared/data/eval/sotu_train.txt" --layout $layout \
      --samples 8 --seq-len 512 --seed "$seed" --threads 1 "${extra[@]}" --out "$out" --json)
    val=$($cmoe eval --model "$out" --text "$shared/data/eval/sotu_val.txt" --threads 1 --json)
    moby=$($cmoe eval --model "$out" --text "$shared/data/corpora/moby_dick.txt" --threads 1 --json)
    echo "$variant,$layout,$seed,$(field "$carve" seconds),$(field "$val" perplexity),$(field "$moby" perplexity),$(field "$val" mean_active_fraction),$(field "$val" max_active_fraction),$(field "$moby" mean_active_fraction),$(field "$moby" max_active_fraction)"
    rm -rf "$out"
  done
done
