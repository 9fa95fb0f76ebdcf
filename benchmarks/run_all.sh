#!/usr/bin/env bash
# Every benchmark of the performance targets in one go, each script's table
# and JSON written to OUT_DIR (what benchmarks/README.md reports).
#
#   bash benchmarks/run_all.sh OUT_DIR                 # CPU, 8-15 min
#   bash benchmarks/run_all.sh OUT_DIR --device cuda   # GPU
#   bash benchmarks/run_all.sh OUT_DIR --quick         # smoke run, ~80 s
#   bash benchmarks/run_all.sh OUT_DIR --device cuda --only head,step_r18_112
#
# On a GPU the step runs three times: R50 at 224² (the pretraining config,
# the size the issue asks for), the same with mixed precision (what
# `tools/train.py --amp` trains with) and R18 at 112² (host-bound: where
# VTHCL's extra kernel launches show; with the compiled head beside it);
# the head runs at R18 112² without the memory subprocesses and with the
# compiled head (each compiled variant compiles in its warm-up, about a
# minute), and data only times the colour on the GPU
# (decoding stays on the CPU). A script that fails does not stop the
# others; the exit status says whether any failed. --only NAME,... runs
# those runs alone (names as in the case below, e.g. to split a GPU session
# into calls of a few minutes each). PYTHON picks the
# interpreter (default: the project's .venv if there is one, else python3).
set -u -o pipefail

usage() { echo "usage: bash benchmarks/run_all.sh OUT_DIR [--device cpu|cuda] [--quick] [--only NAME,...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
out=$1; shift
device=cpu; quick=(); only=
while [ $# -gt 0 ]; do
  case $1 in
    --device) [ $# -ge 2 ] || usage; device=$2; shift 2 ;;
    --quick) quick=(--quick); shift ;;
    --only) [ $# -ge 2 ] || usage; only=,$2,; shift 2 ;;
    *) usage ;;
  esac
done

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PYTHON=$root/.venv/bin/python
  else PYTHON=python3; fi
fi
mkdir -p "$out" || exit 2
export PYTHONUNBUFFERED=1

failed=(); known=(); dry=1
# run NAME SCRIPT ARGS...: table to OUT_DIR/NAME.md, results to NAME.json.
# The plan is walked twice: first dry, only to learn the run names, so a
# typo in --only stops the script before anything runs (on a lent GPU every
# minute counts), then for real.
run() {
  local name=$1 script=$2; shift 2
  if [ $dry = 1 ]; then known+=("$name"); return; fi
  if [ -n "$only" ] && [[ $only != *",$name,"* ]]; then return; fi
  local start=$SECONDS
  echo "== $name: $script $*"
  if "$PYTHON" "$here/$script" --device "$device" "${quick[@]}" \
      --json "$out/$name.json" "$@" 2>&1 | tee "$out/$name.md"; then
    echo "== $name: done in $((SECONDS - start)) s"
  else
    echo "== $name: FAILED after $((SECONDS - start)) s"
    failed+=("$name")
  fi
}

plan() {
  case $device in
    cuda*)
      run step_r50_224 bench_step.py --depth 50 --batch 8 --crop 224 --reps 20
      run step_r50_224_amp bench_step.py --depth 50 --batch 8 --crop 224 \
        --reps 20 --amp
      run step_r18_112 bench_step.py --depth 18 --batch 8 --crop 112 \
        --reps 20 --compile-head
      run head bench_head.py --no-memory --reps 20 --compile
      run scaling bench_scaling.py
      run data bench_data.py --quick ;;
    *)
      run data bench_data.py
      run head bench_head.py
      run step bench_step.py
      run scaling bench_scaling.py ;;
  esac
}

plan
for name in ${only//,/ }; do
  [[ " ${known[*]} " == *" $name "* ]] || {
    echo "--only: no run named $name on $device (runs: ${known[*]})" >&2
    exit 2; }
done
dry=0
plan

if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]} (logs in $out)"
  exit 1
fi
echo "all benchmarks done; tables and JSON in $out"
