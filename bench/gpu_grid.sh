#!/usr/bin/env bash
# The quality grid on a lent GPU machine (16 cores, one H100/H200; see BENCHMARKS.md).
# The machine has PyTorch but not this project's other packages: they travel as wheels in
# .whl/ (python 3.12, --no-deps). Results land in $OUT/quality.jsonl as each job finishes.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
mkdir -p bench/out
[ -f "${SEED_FILE:-bench/out/quality.jsonl}" ] && cp "${SEED_FILE:-bench/out/quality.jsonl}" "$OUT/quality.jsonl"
timeout -s INT "${GRID_SECONDS:-540}" python3 -m bench.grid --workers "${WORKERS:-15}" \
  --threads 1 --micro-batch 128 --out "$OUT/quality.jsonl" "$@" 2>&1 | tee "$OUT/grid.log"
