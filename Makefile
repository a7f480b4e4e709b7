# Two commands on a fresh machine: `make demo` and `make test` (README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint serve worker bench browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pinned first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/reprogram demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The browser tests drive Debian's Chromium through Playwright (a PyPI wheel, dev extra);
# nothing downloads a browser build of its own (never `playwright install`).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

# Two test processes that steal work from each other: 10 minutes on a 2-core machine instead
# of 20 in one process (14 with xdist's default even split). Every test has its own
# database, folder and ports. TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2

test: $(STAMP) lint browser
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal

serve: $(STAMP)
	$(BIN)/reprogram serve

worker: $(STAMP)
	$(BIN)/reprogram worker
