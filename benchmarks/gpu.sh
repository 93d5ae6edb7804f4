#!/usr/bin/env bash
# The prepared GPU run (issue 31): bench.py's cases on the 5,216 real Kermany training images,
# side by side in one call, each case's figures written to $OUT the moment it ends (a call cut
# short keeps what it measured; a failing case is recorded and the run goes on); nvidia-smi's
# utilisation during each case. The cases, most wanted first:
#   the matmul ceilings and the step alone; pneumonia-train end to end at precision auto, then
#   32-true, then bf16-mixed (each epoch timed, the first one reported apart: start-up, the
#   decoded cache, cudnn's autotuning); the hand-tuned loop and the notebook's loop on the same
#   images; pneumonia-evaluate on a labelled folder its checkpoint never saw; the data pipeline
#   alone; each precision again with data.augment_on=device; two GPUs (DDP) where there are two;
#   last, model.compile=true (its compiling in the first epoch, reported apart).
#
# Here, first:   bash benchmarks/gpu_prepare.sh          (gpu_data/ and gpu_wheels/, ignored)
# A dry run here, every case at tiny scale on the same data path: two batches an epoch, but each
# training case still decodes all 5,216 images into its cache and fits the shift score on them
# (about 14 minutes a case on 2 busy cores, machine E); DATA=<a small copy of the same layout>
# gives the same code paths in about a minute a case (12 minutes in all):
#   DEVICE=cpu BATCH=8 MAX_BATCHES=2 REPEATS=1 OUT=/tmp/gpu_dry bash benchmarks/gpu.sh
# On the GPU machine (device tool): command "bash benchmarks/gpu.sh",
#   carry ["gpu_data", "gpu_wheels"], timeout_s 540 (leave time for one rerun of what failed:
#   CASES=a,b bash benchmarks/gpu.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_bench}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-128}
REPEATS=${REPEATS:-3}          # timed epochs after the first (one pass of 5,216 images each)
MAX_BATCHES=${MAX_BATCHES:-0}  # 0: whole epochs
DATA=${DATA:-gpu_data/kermany-224}
CASES=${CASES:-matmul,step_only,train_project,train_project_fp32,train_project_bf16,train_handtuned,train_notebook,evaluate_project,data_project,train_project_device_augment,train_project_fp32_device_augment,train_project_bf16_device_augment,train_project_ddp,train_project_compile}
test -d "$DATA/train" || { echo "no $DATA/train: run bash benchmarks/gpu_prepare.sh here and carry gpu_data" >&2; exit 2; }
mkdir -p "$OUT"
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
# The GPU machine's image has torch and Lightning, not Hydra and the rest: install them from the
# carried wheels, and run the project from this checkout (no build of it needed).
if ! "$PYTHON" -c "import hydra, mlxtend, pytorch_grad_cam, pydicom" 2>/dev/null; then
  test -d gpu_wheels || { echo "the project's dependencies are missing and gpu_wheels/ was not carried" >&2; exit 2; }
  "$PYTHON" -m pip install --quiet --no-index --no-deps gpu_wheels/*.whl 2>&1 | tail -3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# At most 8 files come back from a GPU call: env.txt, machine.txt, cases.jsonl, errors.txt,
# summary.md, all.json and bench.log
{ nvidia-smi || echo "no nvidia-smi"
  "$PYTHON" -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__, 'cuda', torch.cuda.is_available(), 'GPUs', torch.cuda.device_count())"
} > "$OUT/env.txt" 2>&1
"$PYTHON" benchmarks/bench.py --device "$DEVICE" --data "$DATA" --repeats "$REPEATS" \
  --batch-size "$BATCH" --max-batches "$MAX_BATCHES" --cases "$CASES" \
  --out "$OUT" --json "$OUT/all.json" 2>&1 | tee "$OUT/bench.log"
