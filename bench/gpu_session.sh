#!/usr/bin/env bash
# One prepared command for a lent GPU machine (device time is short: run it once, read, give back).
#
#   1. the GPU check (../shared/gpu-check, copied into .gpu-check/ as its README says): the learner
#      on CUDA for every offline objective, ZeRO-2/3, LoRA, and SimPO tokens/s against TRL;
#   2. bench/learner_overhead.py on the same model and pairs: the learner's step against a plain
#      PyTorch loop (ZeRO-1/2, with and without packing), the host syncs of each path, and
#      torch.profiler tables (CPU and CUDA time) of one project step.
#
# From the checkout root, with the device tool:
#     run(command="bash bench/gpu_session.sh", carry=[".gpu-check"], timeout_s=590)
# Everything lands under $OUT: check/ (summary.txt, check.log, runs.tar.gz, ...) and
# learner_overhead.txt. The check builds /tmp/gpucheck-model and unpacks /tmp/gpucheck-site, which
# step 2 reuses. Knobs: SESSION_CHECK_BUDGET_S (default 330: the check's own time budget),
# SESSION_OVERHEAD_S (default 170: the limit of step 2), CHECK_* as in .gpu-check/check.sh.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
if [ ! -f .gpu-check/check.sh ] || [ ! -d .gpu-check/carry ]; then
  echo "gpu_session.sh: .gpu-check/ with carry/ is missing: copy ../shared/gpu-check and run its build_carry.sh" \
       "on the CPU machine, then pass carry=[\".gpu-check\"]" >&2
  exit 2
fi
echo "== 1. GPU check (budget ${SESSION_CHECK_BUDGET_S:-330} s)"
OUT=$OUT/check CHECK_BUDGET_S=${SESSION_CHECK_BUDGET_S:-330} bash .gpu-check/check.sh
echo "check exit $?"

echo "== 2. learner overhead (limit ${SESSION_OVERHEAD_S:-170} s)"
MODEL=${CHECK_MODEL_DIR:-/tmp/gpucheck-model}
SITE=${CHECK_SITE-/tmp/gpucheck-site}
env PYTHONPATH="$ROOT${SITE:+:$SITE}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 DS_BUILD_OPS=0 RLHF_CACHE=/tmp/gpucheck/rlhf-cache \
  timeout "${SESSION_OVERHEAD_S:-170}" "${CHECK_PY:-python3}" bench/learner_overhead.py \
    --device "${CHECK_DEVICE:-cuda}" --dtype "${CHECK_DTYPE:-bfloat16}" --pairs "${CHECK_BATCH:-32}" --steps 4 \
    --nopack --profile --model "$MODEL" --data .gpu-check/data/pairs.jsonl --max-length 256 \
    > "$OUT/learner_overhead.txt" 2>&1
echo "learner_overhead exit $? ($OUT/learner_overhead.txt)"
grep -E "^(plain|project|learner|path|[0-9]+ pairs)" "$OUT/learner_overhead.txt" | head -40
grep -E "^RATIO" "$OUT/check/summary.txt" 2>/dev/null | tail -n 1
