#!/usr/bin/env bash
# The LLM-PNGNN report's and SiReN's ML-1M protocol (python dataloader.py prepare --protocol
# ml1m_random_split), every row of the report's Table 1 on splits 1 and 2, run side by side
# on one machine (a GPU: each run is small, so several share it).
#
#   bash bench/ml1m_protocol.sh --stage RAW_ML1M TEST_DIR EDGES   # copy the inputs into
#        device_data/protocol/ (ml-1m.inter, test1.dat, test2.dat, the authors' edges)
#   bash bench/ml1m_protocol.sh [RESULT_DIR]                      # prepare, then train
#
# RESULT_DIR defaults to result/; each run is an ordinary run folder
# <RESULT_DIR>/ML-1M_split<K>[_llm]/<model>. The folders' train.log, metrics.json and
# epochs.jsonl are packed into $OUT/ml1m_protocol.tar.gz when $OUT is set (the device tool).
# MAX_S (default 500) stops every run after that many seconds; a stopped run resumes with
# python main.py --resume <its folder>.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=device_data/protocol

if [[ "${1:-}" == "--stage" ]]; then
  mkdir -p "$STAGE"
  gzip -c "${2:?RAW_ML1M: the ml-1m.inter file}" > "$STAGE/ml-1m.inter.gz"
  cp "${3:?TEST_DIR}/test1.dat" "${3}/test2.dat" "$STAGE/"
  cp "${4:?EDGES: augmented_edges.pt or its CSV}" "$STAGE/"
  du -sh "$STAGE"
  exit 0
fi

PY=${PYTHON:-python3}
RES=${1:-result}
DATA=device_data/protocol_data
MAX_S=${MAX_S:-500}
mkdir -p "$DATA/raw/ml-1m" "$RES"
[[ -f "$DATA/raw/ml-1m/ml-1m.inter" ]] || gunzip -c "$STAGE/ml-1m.inter.gz" > "$DATA/raw/ml-1m/ml-1m.inter"
EDGES=$(ls "$STAGE"/augmented_edges.* | head -1)
for k in 1 2; do
  $PY dataloader.py prepare --protocol ml1m_random_split --split $k --data_dir "$DATA" \
    --test_file "$STAGE/test$k.dat" --overwrite
done
$PY dataloader.py prepare --protocol ml1m_random_split --split 1 --data_dir "$DATA" \
  --test_file "$STAGE/test1.dat" --augment_edges "$EDGES" --overwrite

DEVICE=$($PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
COMMON=(--data_dir "$DATA" --dataset_augment original --result_dir "$RES" --quiet --device "$DEVICE")
# the report's Table 2 for PN-GNN: batch 4096, lr 5e-3, L2 0.05, 40 negatives, 4 layers,
# 60 epochs; SiReN's code: batch 1024; LightGCN: this project's defaults
run() {  # dataset model extra-flags...
  local dataset=$1 model=$2; shift 2
  timeout "$MAX_S" $PY main.py "${COMMON[@]}" --dataset "$dataset" --model "$model" \
    --path_name "$model" "$@" > "$RES/$dataset.$model.out" 2>&1 \
    || echo "$dataset $model stopped (rc $?)" >> "$RES/stopped.txt"
}
for k in 1 2; do
  run ML-1M_split$k lightgcn &
  run ML-1M_split$k pngnn --batch_size 4096 &
  run ML-1M_split$k siren &
done
run ML-1M_split1_llm lightgcn &
run ML-1M_split1_llm pngnn --batch_size 4096 &
wait

if [[ -n "${OUT:-}" ]]; then
  (cd "$RES" && find . \( -name train.log -o -name metrics.json -o -name epochs.jsonl \
     -o -name config.json -o -name '*.out' -o -name stopped.txt \) -print0 \
     | tar --null -czf "$OUT/ml1m_protocol.tar.gz" -T -)
fi
for f in "$RES"/ML-1M_split*/*/metrics.json; do
  $PY -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[1], m['last_epoch'], round(m['test']['precision@20'],4), round(m['test']['recall@20'],4), round(m['seconds_per_epoch'],1))" "$f"
done
