#!/usr/bin/env bash
# The real-data CPU recipe: train experiment=kermany_cpu on ../shared/data/kermany-224
# (train + val pooled, patient-grouped validation), then evaluate its best checkpoint on that
# validation split with bootstrap intervals. Not part of the test suite: about 25 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-../shared/data/kermany-224}
RUN=${2:-outputs/kermany_cpu/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$RUN"
SECONDS=0
python -m pneumonia.train experiment=kermany_cpu data.root="$ROOT" hydra.run.dir="$RUN" \
  2>&1 | tee "$RUN/console.log"
echo "training wall time: ${SECONDS}s" | tee -a "$RUN/console.log"
CKPT=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['best_model_path'])" "$RUN/metrics.json")
python -m pneumonia.evaluate ckpt_path="$CKPT" split=val hydra.run.dir="$RUN/evaluate_val"
cat "$RUN/evaluate_val/report.md"
