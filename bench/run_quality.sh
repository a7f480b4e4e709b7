#!/usr/bin/env bash
# The accuracy-per-query grid behind BENCHMARKS.md (hours on 2 CPU cores; never run in CI).
# Runs one process at a time (two torch processes on 2 cores slow each other 2-3x), seed by
# seed, so a partial run still covers every (task, oracle, method). Results are appended to
# bench/out/quality.jsonl; `python -m bench.report` turns them into tables and plots.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/out/quality.jsonl}
SEEDS=${SEEDS:-"0 1 2"}
PAIRS=${PAIRS:-"mnist10:imagenet optdigits10:imagenet mnist5:moderation cancer:nsfw"}
METHODS=${METHODS:-"default bar white_box"}
for seed in $SEEDS; do
  for pair in $PAIRS; do
    for method in $METHODS; do
      task=${pair%%:*}; oracle=${pair##*:}
      if [ -f "$OUT" ] && grep -q "\"task\": \"$task\", \"oracle\": \"$oracle\", \"method\": \"$method\", \"seed\": $seed," "$OUT"; then
        continue  # done in an earlier run
      fi
      "$PY" -m bench.quality --task "$task" --oracle "$oracle" \
        --method "$method" --seed "$seed" --out "$OUT"
    done
  done
done
