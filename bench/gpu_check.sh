#!/usr/bin/env bash
# One short check on a CUDA machine: the GPU tests, then seconds per epoch on ML-100K
# (fast path and the reference-equivalent slow path, same process), ML-1M and the
# Amazon_Books shape (synthetic, generated here).
#
#   bash bench/gpu_check.sh --prepare ../shared/datasets   # on this machine: copy ML-100K
#                                                          # and ML-1M into device_data/
#   bash bench/gpu_check.sh                                # on the GPU machine
#
# The data folder is $REFINE_DATA_DIR, default device_data/ (git-ignored; it travels with
# the working tree when named in the device tool's carry). Installs only what is missing:
# a GPU machine brings its own CUDA torch, which requirements.txt (torch>=2.4) accepts.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${REFINE_DATA_DIR:-device_data}

if [[ "${1:-}" == "--prepare" ]]; then
  src=${2:?usage: bash bench/gpu_check.sh --prepare SPLIT_FOLDER}
  for d in ML-100K ML-1M; do
    mkdir -p "$DATA/$d"
    cp "$src/$d/"*.csv "$DATA/$d/"
  done
  du -sh "$DATA"
  exit 0
fi

python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { echo "error: no CUDA device; this script is for a GPU machine" >&2; exit 1; }
python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "on", torch.cuda.get_device_name(0))'
pip install -q -r requirements.txt 2>&1 | tail -n 2 || true
export REFINE_DATA_DIR=$DATA

echo "== GPU tests"
python -m pytest -q -m gpu tests/test_gpu.py
echo "== ML-100K: fast vs reference-equivalent slow path; ML-1M fast (train_original)"
python bench/epoch_time.py --device cuda --data_dir "$DATA" --datasets ML-100K --large ML-1M \
    --epochs 4 --slow_epochs 2
echo "== scale shapes (Netflix-1M and Amazon_Books synthetic, ML-1M real)"
python bench/scale.py --device cuda --data_dir "$DATA" --shapes ML-1M Netflix-1M Amazon_Books \
    --batches 200
echo "reference, one RTX A6000: Amazon_Books 822 s/epoch (target: >= 20x faster, <= 41 s)"
