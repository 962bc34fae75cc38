#!/usr/bin/env bash
# One short check on a CUDA machine: the GPU tests, then seconds per epoch on ML-100K
# (fast path and the reference-equivalent slow path, same process), ML-1M and the
# Amazon_Books shape (synthetic, generated here).
#
#   bash bench/gpu_check.sh --prepare DATA_DIR   # copy ML-100K from a split folder
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

PY=${PYTHON:-python3}
# Results go to $OUT when the device tool sets it, else bench/results/gpu/ (one log per stage).
RES=${OUT:-bench/results/gpu}
mkdir -p "$RES"
# Optional last stage: a full ML-100K ReFINe++ run on the GPU, cut off after this many seconds.
FULL_RUN_S=${GPU_CHECK_FULL_RUN_S:-0}

$PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { echo "error: no CUDA device; this script is for a GPU machine" >&2; exit 1; }
$PY -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "on", torch.cuda.get_device_name(0))'
# GPU images usually have everything; install (from requirements.txt) only what is missing,
# so that a machine with no network does not wait on pip.
$PY -c 'import torch_geometric, pandas, tqdm, pytest, numpy' 2>/dev/null \
  || $PY -m pip install -q --retries 1 --timeout 10 -r requirements.txt
export REFINE_DATA_DIR=$DATA PYTHONUNBUFFERED=1

stage() {  # stage NAME SECONDS COMMAND...: run one stage under a time limit, log it, go on
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit} s)"
  local t0=$SECONDS rc=0
  timeout "$limit" "$@" 2>&1 | tee "$RES/$name.log" || rc=$?
  echo "== $name: rc=$rc after $((SECONDS - t0)) s"
}

stage gpu_tests 180 $PY -m pytest -q -m gpu tests/test_gpu.py
stage scale 240 $PY bench/scale.py --device cuda --data_dir "$DATA" \
    --shapes ML-1M Netflix-1M Amazon_Books --batches 200 --json "$RES/scale.json"
echo "reference, one RTX A6000: Amazon_Books 822 s/epoch (target: >= 20x faster, <= 41 s)"
stage epoch_time 180 $PY bench/epoch_time.py --device cuda --data_dir "$DATA" \
    --datasets ML-100K --large ML-1M --epochs 4 --slow_epochs 2
if (( FULL_RUN_S > 0 )); then
  rm -rf /tmp/gpu_runs
  stage ml100k_full_run "$FULL_RUN_S" $PY main.py --dataset ML-100K --device cuda \
      --data_dir "$DATA" --no_download --result_dir /tmp/gpu_runs --path_name gpu --quiet
  for f in train.log metrics.json epochs.jsonl; do
    cp /tmp/gpu_runs/ML-100K/gpu/$f "$RES/ml100k_$f" 2>/dev/null || true
  done
fi
