#!/usr/bin/env bash
# The user benchmark's grid (bench/user_grid.py) on a lent GPU machine (16 cores, one
# H100/H200), after bench/gpu_user_prep.sh here, with run(carry=[".whl", "bench/out/tasks"]).
# The rows already in bench/results/user_grid.jsonl are copied to $OUT/user_grid.jsonl first,
# so the cells they hold are skipped; each finished job appends its row there.
#   bash bench/gpu_user_grid.sh --phase white_box_seeds   # the ceilings of seeds 1-2: 72 jobs
# Seen on an H200 (2026-12-04): 14 jobs at once took 350-530 s each, 6 at once 197-215 s, so
# about 2 white-box jobs a minute; give GRID_SECONDS the call's limit less a minute.
set -u
python3 -c "import numpy, torch; print('torch', torch.__version__, torch.cuda.is_available())" \
  || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export REPROGRAM_TASK_DIR=$PWD/bench/out/tasks
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
cp bench/results/user_grid.jsonl "$OUT/user_grid.jsonl"
timeout -s INT "${GRID_SECONDS:-540}" python3 -m bench.user_grid --workers "${WORKERS:-14}" \
  --threads 1 --out "$OUT/user_grid.jsonl" "$@" 2>&1 | tee "$OUT/grid.log"
