#!/usr/bin/env bash
# Run HERE, before the GPU call: what benchmarks/gpu.sh needs on the GPU machine, in two ignored
# folders of the checkout that the call carries (carry=["gpu_data", "gpu_wheels"], 64 MiB in all).
#   gpu_data/kermany-224   a link-free copy of ../shared/data/kermany-224: the 5,216 real training
#                          images and the 16 of val/ (45 MB)
#   gpu_wheels/            the project's dependencies that the GPU machine's image lacks, for its
#                          Python 3.12 (wheels only: nothing is built there)
#   bash benchmarks/gpu_prepare.sh [path/to/kermany-224]
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE=${1:-../shared/data/kermany-224}
test -d "$SOURCE/train" || { echo "no $SOURCE/train: give the kermany-224 folder" >&2; exit 2; }
rm -rf gpu_data && mkdir -p gpu_data
cp -rL "$SOURCE" gpu_data/kermany-224   # -L: files, never links (a link travels as a link)
echo "gpu_data/kermany-224: $(find gpu_data/kermany-224/train -type f | wc -l) training images, $(du -sh gpu_data | cut -f1)"
rm -rf gpu_wheels && mkdir -p gpu_wheels
# What the image has (KINDS.md): torch, torchvision, pytorch-lightning, torchmetrics, timm,
# tensorboard, matplotlib, pandas, scipy, pyyaml, onnx, onnxruntime... What it lacks, as wheels
# for its Python 3.12:
python3 -m pip download --quiet --no-deps --dest gpu_wheels --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 \
  "hydra-core>=1.3.2,<1.4" "omegaconf>=2.3,<2.4" "mlxtend>=0.23" ttach \
  "pydicom>=3.0,<4"   # not efficientnet-lite0 (17 MB; only model=efficientnet_lite0 imports it)
# grad-cam and antlr4 publish only their source: built here into pure-Python wheels (py3-none-any)
python3 -m pip wheel --quiet --no-deps --wheel-dir gpu_wheels \
  "grad-cam>=1.5" "antlr4-python3-runtime==4.9.*"
ls gpu_wheels
du -sh gpu_data gpu_wheels
echo "carried: $(du -scm gpu_data gpu_wheels | tail -1 | cut -f1) MiB of the 64 MiB a call may carry"
