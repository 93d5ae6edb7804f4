#!/usr/bin/env bash
# The prepared GPU run (issue 22): bench.py's GPU cases side by side in one call, under 8
# minutes on one H200, each case's figures written to $OUT the moment it ends (a call that is
# cut short keeps what it measured; a failing case is recorded and the run goes on):
#   the matmul ceilings and the step alone, the data pipeline alone, the notebook's loop, a
#   hand-tuned loop, pneumonia-train end to end (precision auto, then the other precision, then
#   with data.augment_on=device), inference, and last the run with model.compile=true (its
#   compiling shown apart); the step alone also at twice the batch and with cudnn.benchmark;
#   nvidia-smi's utilisation during each case.
#
#   OUT=/where bash benchmarks/gpu.sh                        on a machine with an NVIDIA GPU
#   DEVICE=cpu CASES=matmul,step_only BATCH=8 OUT=/tmp/dry bash benchmarks/gpu.sh   a dry run
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_bench}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-128}
CASES=${CASES:-matmul,step_only,data_project,train_notebook,train_handtuned,train_project,train_project_other,train_project_device_augment,infer_fp32,infer_bf16,train_project_compile}
mkdir -p "$OUT"
{ nvidia-smi || echo "no nvidia-smi"; } > "$OUT/nvidia-smi.txt" 2>&1
python -c "import torch; print(torch.__version__, torch.cuda.is_available())" > "$OUT/torch.txt"
python benchmarks/bench.py --device "$DEVICE" --quick --batch-size "$BATCH" --cases "$CASES" \
  --out "$OUT" --json "$OUT/all.json" 2>&1 | tee "$OUT/bench.log"
