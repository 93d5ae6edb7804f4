#!/usr/bin/env bash
# The real-data CPU recipe: train experiment=kermany_cpu on a Kermany chest_xray/ folder
# (train + val pooled, patient-grouped validation), with the patients of a holdout folder of
# original files (NORMAL/, PNEUMONIA/) held out of training and checked afterwards; then
# evaluate the best checkpoint on the validation split and on the holdout folder, with
# bootstrap intervals. Not part of the test suite: 30 minutes by design.
#   bash benchmarks/kermany_cpu.sh /path/to/chest_xray [RUN_DIR] [overrides ...]
#   bash benchmarks/kermany_cpu.sh /path/to/chest_xray outputs/k_seed7 seed=7
#   HOLDOUT=/path/to/originals bash benchmarks/kermany_cpu.sh /path/to/chest_xray
#   HOLDOUT= bash benchmarks/kermany_cpu.sh ...   # train on every image, no holdout check
# The defaults are the project developers' copies beside the checkout (../shared/data/...).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-../shared/data/kermany-224}
RUN=${2:-outputs/kermany_cpu/$(date +%Y-%m-%d_%H-%M-%S)}
HOLDOUT=${HOLDOUT-../shared/data/originals}
EXTRA=()
if [ -n "$HOLDOUT" ]; then EXTRA+=("data.holdout_root=$HOLDOUT"); fi
mkdir -p "$RUN"
SECONDS=0
python -m pneumonia.train experiment=kermany_cpu data.root="$ROOT" hydra.run.dir="$RUN" \
  "${EXTRA[@]}" "${@:3}" 2>&1 | tee "$RUN/console.log"
echo "training wall time: ${SECONDS}s" | tee -a "$RUN/console.log"
CKPT=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['best_model_path'])" "$RUN/metrics.json")
python -m pneumonia.evaluate ckpt_path="$CKPT" split=val hydra.run.dir="$RUN/evaluate_val"
cat "$RUN/evaluate_val/report.md"
if [ -n "$HOLDOUT" ]; then
  python -m pneumonia.evaluate ckpt_path="$CKPT" split=holdout hydra.run.dir="$RUN/evaluate_holdout"
  cat "$RUN/evaluate_holdout/report.md"
fi
