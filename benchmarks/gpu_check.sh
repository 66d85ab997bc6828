#!/usr/bin/env bash
# One check for a lent GPU machine (torch, timm, transformers installed; vLLM optional; no
# network), well under 8 minutes, writing ONE JSON file:
#   - the trainer's paper preset for real optimizer steps: images/s per stage, peak GPU
#     memory, projected GPU-hours of the paper's schedule (benchmarks/gpu_train_check.py
#     where present, else benchmarks/gpu_check.py train);
#   - where vLLM is importable and VLLM_MODEL names a model folder: labeling throughput
#     (reports/s, output tokens/s) through the vllm backend.
# Usage: benchmarks/gpu_check.sh OUT.json [--cpu-smoke]
#   --cpu-smoke: a reduced run (one tiny step, 4 reports) that tests this script on a CPU box.
# Env: PYTHON (default python3), VLLM_MODEL (HF folder for the labeling part), STEPS (20).
set -uo pipefail
OUT="${1:?usage: gpu_check.sh OUT.json [--cpu-smoke]}"
SMOKE="${2:-}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}"
PARTS="$(mktemp -d)"
trap 'rm -rf "$PARTS"' EXIT
flag=()
[[ "$SMOKE" == "--cpu-smoke" ]] && flag=(--cpu-smoke)
if [[ -n "$SMOKE" && "$SMOKE" != "--cpu-smoke" ]]; then
  echo "unknown option $SMOKE (expected --cpu-smoke)" >&2; exit 2
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    > "$PARTS/nvidia_smi.txt" 2>&1 || true
  "$PY" -c 'import json,sys; print(json.dumps({"nvidia_smi": open(sys.argv[1]).read().strip()}))' \
    "$PARTS/nvidia_smi.txt" > "$PARTS/device.json"
fi

rc=0
if [[ -f "$HERE/gpu_train_check.py" ]]; then
  timeout 330 "$PY" "$HERE/gpu_train_check.py" --out "$PARTS/train.json" "${flag[@]}" || rc=$?
else
  timeout 330 "$PY" "$HERE/gpu_check.py" train --out "$PARTS/train.json" \
    --steps "${STEPS:-20}" "${flag[@]}" || rc=$?
fi
[[ $rc -ne 0 ]] && echo "{\"error\": \"train part exited $rc\"}" > "$PARTS/train.json"

lrc=0
model=()
[[ -n "${VLLM_MODEL:-}" ]] && model=(--model "$VLLM_MODEL")
timeout 240 "$PY" "$HERE/gpu_check.py" label --out "$PARTS/label.json" "${model[@]}" "${flag[@]}" \
  || lrc=$?
[[ $lrc -ne 0 ]] && echo "{\"error\": \"label part exited $lrc\"}" > "$PARTS/label.json"

"$PY" "$HERE/gpu_check.py" merge --out "$OUT" "$PARTS"/*.json
echo "wrote $OUT"
exit $(( rc != 0 || lrc != 0 ))
