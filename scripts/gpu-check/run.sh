#!/usr/bin/env bash
# The on-device half of the one-command GPU check (issue 17; docs/benchmarks.md, "GPU check"). Packed into
# device/gpu-check.tar.xz by scripts/gpu-check/pack.sh together with a self-contained cmoe (no libtorch inside),
# models/tinyref-llama and the data. On the GPU machine (no dotnet, no network, PyTorch with CUDA installed):
#
#   tar -xJf gpu-check.tar.xz && bash gpu-check/run.sh            # OUT=<folder> for the outputs (default ./out)
#   bash gpu-check/run.sh --cpu        # (or --dry-run) the same steps on the CPU with tiny sizes (CI, no GPU)
#
# It loads that machine's own libtorch (CMOE_GPU_CHECK_LIBTORCH, else CMOE_LIBTORCH, else
# `python3 -c "import torch,os;print(os.path.dirname(torch.__file__))"`/lib; in --cpu mode also the NuGet cache's
# libtorch-cpu-linux-x64), then in one go: carves S2A2E16 and S3A3E8 on the CPU; evals dense and carved on the device
# vs the CPU (relative perplexity difference, within 1e-4?); benches dense vs carved on the device; the S2A2E16 LoRA
# recovery fine-tune (2048 x 512 tokens) on the device and its eval; the SpamScoring fine-tune (cmoe classify-train)
# when this build has it; the bf16 fine-tune and the S3A3E8 bench when time is left. Each step has its own time limit and the whole run a
# budget (CMOE_GPU_CHECK_BUDGET_S, default 600 s on cuda, 240 s with --cpu); a failed or timed-out step is recorded
# and the run goes on. Outputs in $OUT: <step>.json (the command's --json), <step>.log (its stderr), steps.tsv,
# summary.json, summary.txt, nvidia-smi.txt. Large model folders go to gpu-check/work, not $OUT.
# Exit status: 0 when every step that ran succeeded (classify-train missing from the build does not count), else 1.
set -uo pipefail

mode=${CMOE_GPU_CHECK_DEVICE:-cuda}
tiny=0
for arg in "$@"; do
  case "$arg" in
    --cpu|--dry-run) mode=cpu; tiny=1 ;;
    --full-cpu) mode=cpu ;;   # the full sizes on the CPU (slow; for comparison only)
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$arg' (use --cpu, --dry-run or --help)" >&2; exit 2 ;;
  esac
done
[ "$mode" = cpu ] && [ "${CMOE_GPU_CHECK_DEVICE:-}" = cpu ] && [ "$#" -eq 0 ] && tiny=${CMOE_GPU_CHECK_TINY:-1}
case "$mode" in cuda|cpu) ;; *) echo "run.sh: CMOE_GPU_CHECK_DEVICE must be cuda or cpu" >&2; exit 2 ;; esac

here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
work=${CMOE_GPU_CHECK_WORK:-$here/work}
rm -rf "$work" && mkdir -p "$work"
cmoe=$here/cli/cmoe
model=$here/models/tinyref-llama
train=$here/data/sotu_train.txt
val=$here/data/sotu_val.txt
moby=$here/data/moby_dick.txt
tsv=$(ls "$here"/data/*.tsv 2>/dev/null | head -1)
# The probe fine-tune (and everything in tiny mode) reads the first 1 MB of sotu_train: tokenizing all 10 MB takes
# tens of seconds per process.
head -c 1000000 "$train" > "$work/sotu_train_head.txt"
probe_train=$work/sotu_train_head.txt
start=$(date +%s)
if [ "$mode" = cuda ]; then budget=${CMOE_GPU_CHECK_BUDGET_S:-600}; else budget=${CMOE_GPU_CHECK_BUDGET_S:-240}; fi
log=$OUT/run.log
: > "$log"
say() { echo "[gpu-check $(( $(date +%s) - start ))s] $*" | tee -a "$log" >&2; }

# Sizes: the issue's on the device; tiny ones for --cpu/--dry-run (checks the plumbing, not the figures).
if [ "$tiny" = 1 ]; then
  carve_args=(--samples 2 --seq-len 128)
  eval_args=(--max-windows 2 --seq-len 128)
  bench_args=(--prompt-tokens 16 --decode-tokens 8 --repeats 1 --ffn-tokens 8)
  ft_samples=4; ft_seq=64; ft_probe_steps=0; bf16_args=(--max-steps 1)
  cls_args=(--max-tokens 16 --epochs 1 --max-steps 4 --validation-fraction 0.02)
  lim_carve=60; lim_eval=45; lim_bench=60; lim_ft=90; lim_cls=150
  train=$probe_train
else
  carve_args=()                 # the CLI defaults: 8 random 512-token windows of sotu_train, seed 0
  eval_args=()                  # the CLI defaults: 256 non-overlapping 512-token windows (docs/benchmarks.md)
  bench_args=()
  ft_samples=2048; ft_seq=512; ft_probe_steps=16; bf16_args=()
  cls_args=(--max-tokens 96 --epochs 1)
  lim_carve=90; lim_eval=90; lim_bench=90; lim_ft=240; lim_cls=150
fi

# libtorch: the machine's own. CPU steps find it through LD_LIBRARY_PATH (TorchSharp's libLibTorchSharp.so needs
# libtorch.so); CUDA steps through CMOE_LIBTORCH (src/CMoE.Core/Modeling/Backend/TorchRuntime.cs loads it by path).
torchlib=${CMOE_GPU_CHECK_LIBTORCH:-${CMOE_LIBTORCH:-}}
if [ -z "$torchlib" ] && command -v python3 >/dev/null; then
  torchdir=$(python3 -c "import torch,os;print(os.path.dirname(torch.__file__))" 2>/dev/null) && torchlib=$torchdir/lib
fi
if [ -z "$torchlib" ] && [ "$mode" = cpu ]; then
  torchlib=$(ls -d "$HOME"/.nuget/packages/libtorch-cpu-linux-x64/*/runtimes/linux-x64/native 2>/dev/null | sort -V | tail -1)
fi
if [ -z "$torchlib" ] || [ ! -f "$torchlib/libtorch.so" ]; then
  say "no libtorch folder found (set CMOE_GPU_CHECK_LIBTORCH to a folder with libtorch.so); steps will fail"
fi
export LD_LIBRARY_PATH=$torchlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if [ "$mode" = cuda ]; then export CMOE_LIBTORCH=$torchlib; else unset CMOE_LIBTORCH; fi
say "mode $mode (tiny sizes: $tiny), budget ${budget}s, libtorch $torchlib, out $OUT"

# Versions and the machine.
{
  echo "cmoe $("$cmoe" --version 2>&1)"
  python3 -c "import torch;print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>/dev/null || echo "torch (no python3 torch)"
  echo "os $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME") $(uname -r)"
  echo "cpus $(nproc)"
  if command -v nvidia-smi >/dev/null; then
    echo "nvidia-smi $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | head -1)"
  else
    echo "nvidia-smi (not found)"
  fi
  sed -n 's/^commit: /commit /p' "$here/MANIFEST.txt" 2>/dev/null
} > "$OUT/versions.txt" 2>&1
command -v nvidia-smi >/dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
cat "$OUT/versions.txt" | tee -a "$log" >&2

# step NAME LIMIT cmd...: stdout -> $OUT/NAME.json (NAME.txt without --json), stderr -> $OUT/NAME.log, a row in steps.tsv.
# The limit is cut to what is left of the budget; with under 15 s left the step is skipped.
steps=$OUT/steps.tsv
printf 'step\tstatus\trc\tseconds\tlimit_s\n' > "$steps"
failed=0
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( budget - ($(date +%s) - start) ))
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped\t-\t0\t0\n' "$name" >> "$steps"; say "$name: skipped (budget spent)"; return 99
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0 t1 rc status
  t0=$(date +%s.%N)
  local ext=txt a
  for a in "$@"; do [ "$a" = --json ] && ext=json; done
  timeout -k 10 "$limit" "$@" > "$OUT/$name.$ext" 2> "$OUT/$name.log"
  rc=$?
  t1=$(date +%s.%N)
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  [ "$rc" -ne 0 ] && failed=1
  local secs
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$secs" "$limit" >> "$steps"
  say "$name: $status (rc $rc) in ${secs}s, limit ${limit}s"
  [ "$rc" -ne 0 ] && tail -3 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$log" >&2
  return $rc
}
dev=$mode

# (a) carve on the CPU.
step carve-S2A2E16 "$lim_carve" "$cmoe" carve --model "$model" --calibration "$train" --layout S2A2E16 \
  --out "$work/s2a2e16" --device cpu "${carve_args[@]}" --json
step carve-S3A3E8 "$lim_carve" "$cmoe" carve --model "$model" --calibration "$train" --layout S3A3E8 \
  --out "$work/s3a3e8" --device cpu "${carve_args[@]}" --json

# (b) eval on the device vs the CPU: dense, S2A2E16, S3A3E8 (sotu_val).
for m in dense:"$model" s2a2e16:"$work/s2a2e16" s3a3e8:"$work/s3a3e8"; do
  name=${m%%:*}; folder=${m#*:}
  step "eval-$name-dev" "$lim_eval" "$cmoe" eval --model "$folder" --text "$val" --device "$dev" "${eval_args[@]}" --json
  step "eval-$name-cpu" "$lim_eval" "$cmoe" eval --model "$folder" --text "$val" --device cpu "${eval_args[@]}" --json
done

# ML.NET scoring through the packed CLI (the LanguageModelScoring transformer over a TextLoader view).
score_rows=256; [ "$tiny" = 1 ] && score_rows=8
head -n $(( score_rows + 1 )) "$tsv" > "$work/spam-head.tsv"
step score-s2a2e16-dev "$lim_eval" "$cmoe" score --model "$work/s2a2e16" --input "$work/spam-head.tsv" --text-column Body \
  --out "$work/spam-scored.tsv" --max-tokens 96 --device "$dev"

# (c) bench on the device: dense vs carved S2A2E16 (S3A3E8 at the end, when time is left).
step bench-S2A2E16 "$lim_bench" "$cmoe" bench --model "$model" --carved "$work/s2a2e16" --device "$dev" "${bench_args[@]}" --json

# (d) the S2A2E16 LoRA recovery fine-tune, issue budget (2048 x 512 tokens, batch 2, lr 1e-3; docs/benchmarks.md).
# A short probe first gives a tokens/s figure even if the full run runs out of time.
ft=(--model "$work/s2a2e16" --samples "$ft_samples" --seq-len "$ft_seq" --batch 2 --mode lora --lr 1e-3 --device "$dev")
[ "$ft_probe_steps" -gt 0 ] &&
  step finetune-probe 120 "$cmoe" finetune "${ft[@]}" --data "$probe_train" --max-steps "$ft_probe_steps" --out "$work/s2a2e16-probe" --json
step finetune-S2A2E16-lora "$lim_ft" "$cmoe" finetune "${ft[@]}" --data "$train" --out "$work/s2a2e16-lora" --json &&
  step eval-s2a2e16-lora-dev "$lim_eval" "$cmoe" eval --model "$work/s2a2e16-lora" --text "$val" --device "$dev" "${eval_args[@]}" --json &&
  step eval-s2a2e16-lora-moby-dev "$lim_eval" "$cmoe" eval --model "$work/s2a2e16-lora" --text "$moby" --device "$dev" "${eval_args[@]}" --json

# (e) the SpamScoring fine-tune, when this build has `cmoe classify-train`.
classify=absent
# (`cmoe <unknown> --help` prints the root help with status 0, so look for the command in the root help first.)
if "$cmoe" --help 2>/dev/null | grep -qE '^ +classify-train( |$)' &&
   "$cmoe" classify-train --help > "$OUT/classify-train-help.txt" 2>&1; then
  classify=present
  cls=(--model "$work/s2a2e16" --data "$tsv" --out "$work/spam-s2a2e16.zip")
  # Pass only the options this build's help lists (the command is new; its options may still move).
  set -- "${cls_args[@]}" --label-column Label --text-column Body --device "$dev" --json
  while [ "$#" -gt 0 ]; do
    o=$1; shift; v=
    if [ "$#" -gt 0 ] && [ "${1#--}" = "$1" ]; then v=$1; shift; fi
    if grep -q -- "$o\b" "$OUT/classify-train-help.txt"; then cls+=("$o"); [ -n "$v" ] && cls+=("$v"); fi
  done
  step classify-train-S2A2E16 "$lim_cls" "$cmoe" classify-train "${cls[@]}"
else
  say "classify-train not in this build"
  printf '%s\tabsent\t-\t0\t0\n' classify-train-S2A2E16 >> "$steps"
fi

# bf16 fine-tune when time is left (meant for GPUs).
step finetune-S2A2E16-lora-bf16 "$lim_ft" "$cmoe" finetune "${ft[@]}" --data "$train" --dtype bf16 "${bf16_args[@]}" --out "$work/s2a2e16-lora-bf16" --json &&
  step eval-s2a2e16-lora-bf16-dev "$lim_eval" "$cmoe" eval --model "$work/s2a2e16-lora-bf16" --text "$val" --device "$dev" "${eval_args[@]}" --json

# S3A3E8 bench when time is left.
step bench-S3A3E8 "$lim_bench" "$cmoe" bench --model "$model" --carved "$work/s3a3e8" --device "$dev" "${bench_args[@]}" --json

total=$(( $(date +%s) - start ))
say "steps done in ${total}s"

# Summary (python3 is there wherever PyTorch is; without it only steps.tsv and the step files remain).
if command -v python3 >/dev/null; then
  python3 - "$OUT" "$mode" "$tiny" "$total" "$budget" "$classify" "$torchlib" "$score_rows" <<'PY' || failed=1
import json, os, sys
out, mode, tiny, total, budget, classify, torchlib, score_rows = sys.argv[1:9]
rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(out, "steps.tsv"))][1:]
steps = {r[0]: {"status": r[1], "rc": None if r[2] == "-" else int(r[2]), "seconds": float(r[3]), "limit_s": int(r[4])} for r in rows}

def load(name):
    p = os.path.join(out, name + ".json")
    if steps.get(name, {}).get("status") != "ok" or not os.path.exists(p):
        return None
    try:
        return json.load(open(p))
    except ValueError:
        return None

versions = {}
for line in open(os.path.join(out, "versions.txt")):
    k, _, v = line.strip().partition(" ")
    versions[k] = v
s = {"mode": mode, "tiny_sizes": tiny == "1", "device": mode, "libtorch": torchlib, "total_seconds": int(total),
     "budget_seconds": int(budget), "versions": versions, "steps": steps}
s["carve"] = {l: (lambda j: j and {"seconds": j.get("seconds"), "active_ffn_fraction": j.get("active_ffn_fraction")})(load("carve-" + l))
              for l in ("S2A2E16", "S3A3E8")}
ev = {}
for m in ("dense", "s2a2e16", "s3a3e8"):
    d, c = load(f"eval-{m}-dev"), load(f"eval-{m}-cpu")
    e = {"perplexity_device": d and d["perplexity"], "perplexity_cpu": c and c["perplexity"],
         "seconds_device": d and d["seconds"], "seconds_cpu": c and c["seconds"], "tokens": (d or c or {}).get("tokens")}
    if d and c:
        rel = abs(d["perplexity"] - c["perplexity"]) / c["perplexity"]
        e["relative_difference"] = rel
        e["within_1e-4"] = rel <= 1e-4
    ev[m] = e
s["eval"] = ev
bench = {}
for l in ("S2A2E16", "S3A3E8"):
    j = load("bench-" + l)
    if j:
        bench[l] = {k: {f: j[k].get(f) for f in ("prefill_tokens_per_s", "decode_tokens_per_s", "decode_ms_per_token", "ffn_decode_us_per_token")}
                    for k in ("dense", "carved")}
        bench[l]["ratios"] = j.get("ratios")
s["bench"] = bench
ft = {}
for key, name, evname in (("probe", "finetune-probe", None), ("lora_fp32", "finetune-S2A2E16-lora", "eval-s2a2e16-lora-dev"),
                          ("lora_bf16", "finetune-S2A2E16-lora-bf16", "eval-s2a2e16-lora-bf16-dev")):
    j = load(name)
    if j:
        o = j.get("options", {})
        f = {"seconds": j.get("seconds"), "tokens_per_second": j.get("tokens_per_second"), "steps": j.get("steps"),
             "first_loss": j.get("first_loss"), "final_loss": j.get("final_loss"), "tokens": (j.get("steps") or 0) * o.get("batch", 0) * o.get("seq_len", 0),
             "dtype": o.get("dtype")}
        if key != "probe" and j.get("seconds"):
            f["speedup_vs_authors_h100_427s"] = round(427.0 / j["seconds"], 2) if not tiny == "1" else None
        e = evname and load(evname)
        if e:
            f["perplexity_after"] = e["perplexity"]
        e = key == "lora_fp32" and load("eval-s2a2e16-lora-moby-dev")
        if e:
            f["perplexity_after_moby_dick"] = e["perplexity"]
        ft[key] = f
if "probe" in ft and ft["probe"].get("tokens_per_second"):
    ft["probe"]["projected_seconds_at_2048x512"] = round(2048 * 512 / ft["probe"]["tokens_per_second"], 1)
s["finetune_S2A2E16"] = ft
sc = steps.get("score-s2a2e16-dev")
if sc:
    s["score_s2a2e16"] = {"status": sc["status"], "rows": int(score_rows), "seconds_with_startup": sc["seconds"]}
if classify == "present":
    s["classify_train"] = load("classify-train-S2A2E16") or {"status": steps.get("classify-train-S2A2E16", {}).get("status")}
else:
    s["classify_train"] = "classify-train not in this build"
ran = [v for v in steps.values() if v["status"] not in ("absent",)]
s["all_steps_ok"] = all(v["status"] == "ok" for v in ran)
s["evals_within_1e-4"] = all(e.get("within_1e-4") for e in ev.values()) if all("within_1e-4" in e for e in ev.values()) else None
json.dump(s, open(os.path.join(out, "summary.json"), "w"), indent=2)

def fmt(x, f="{:.4f}"):
    return "-" if x is None else f.format(x)
L = [f"gpu-check summary: mode {mode}{' (tiny sizes)' if tiny == '1' else ''}, {total} s of a {budget} s budget",
     *[f"  {k}: {v}" for k, v in versions.items()], "", "steps:"]
L += [f"  {n:28s} {v['status']:8s} rc {'-' if v['rc'] is None else v['rc']:>3}  {v['seconds']:7.1f} s (limit {v['limit_s']} s)" for n, v in steps.items()]
L += ["", f"eval sotu_val ({mode} vs cpu): perplexity device / cpu, relative difference, within 1e-4"]
for m, e in ev.items():
    L.append(f"  {m:8s} {fmt(e['perplexity_device'])} / {fmt(e['perplexity_cpu'])}  rel {fmt(e.get('relative_difference'), '{:.2e}')}  {e.get('within_1e-4', '-')}"
             f"  ({fmt(e['seconds_device'], '{:.1f}')} s / {fmt(e['seconds_cpu'], '{:.1f}')} s)")
for l, b in bench.items():
    L.append(f"bench {l} on {mode}: prefill tok/s dense {fmt(b['dense']['prefill_tokens_per_s'], '{:.1f}')} carved {fmt(b['carved']['prefill_tokens_per_s'], '{:.1f}')};"
             f" decode tok/s dense {fmt(b['dense']['decode_tokens_per_s'], '{:.1f}')} carved {fmt(b['carved']['decode_tokens_per_s'], '{:.1f}')}")
for k, f in ft.items():
    L.append(f"finetune S2A2E16 {k}: {f['tokens']} tokens, {f['steps']} steps in {fmt(f['seconds'], '{:.1f}')} s, {fmt(f['tokens_per_second'], '{:.0f}')} tok/s,"
             f" loss {fmt(f['first_loss'], '{:.3f}')} -> {fmt(f['final_loss'], '{:.3f}')}, perplexity after {fmt(f.get('perplexity_after'), '{:.2f}')}"
             + (f" (moby_dick {f['perplexity_after_moby_dick']:.2f})" if f.get("perplexity_after_moby_dick") else "")
             + (f", {f['speedup_vs_authors_h100_427s']}x the authors' 427 s" if f.get("speedup_vs_authors_h100_427s") else ""))
if "score_s2a2e16" in s:
    L.append(f"score (ML.NET, S2A2E16, {score_rows} SpamScoring rows, 96 tokens): {s['score_s2a2e16']['status']} in {s['score_s2a2e16']['seconds_with_startup']} s with start-up")
c = s["classify_train"]
L.append("classify-train: " + (c if isinstance(c, str) else json.dumps(c)[:600]))
L.append(f"all steps ok: {s['all_steps_ok']}; evals within 1e-4: {s['evals_within_1e-4']}")
open(os.path.join(out, "summary.txt"), "w").write("\n".join(L) + "\n")
PY
  cat "$OUT/summary.txt" >&2
else
  say "python3 not found: no summary.json; see steps.tsv"
  cat "$steps" >&2
fi
exit $failed
