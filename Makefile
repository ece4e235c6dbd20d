# Two commands: `make demo` and `make test`. Each sets up .venv on a fresh machine first, from
# the committed hash-pinned lock (requirements/cpu.txt), so a new release on the registry
# cannot change what gets installed. `make lock` refreshes the locks; `make test-latest` runs
# the suite on today's registry, unlocked, to see the next break coming.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DATA ?= data
LOCK ?= requirements/cpu.txt
# Every extra the suite exercises (the vllm extra pins its own torch and is left out).
EXTRAS := engine,faiss,text,diffusers,service,triton,dev
LATEST ?= .venv-latest

.PHONY: demo test test-reliability lint typecheck install fonts chromium data fortunes lock test-latest clean

demo: install fonts $(DATA)/mnist/test.npz
	$(VENV)/bin/privevo run --config configs/demo-mnist.yaml --out runs/demo-$$(date +%Y%m%d-%H%M%S)

# Triton reads TRITON_INTERPRET once, at import: its CPU-interpreter tests run in a second process.
test: install fonts chromium data lint typecheck
	bash scripts/ensure-redis.sh
	$(PY) -m pytest -q -m "not triton_interpret"
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m triton_interpret

# The reliability campaign at full length (`make test` runs its short version): hostile
# inputs, a database outage, side channels, limits, schemathesis over openapi.yaml. It starts
# its own redis-server and PostgreSQL on free ports and prints its figures at the end.
test-reliability: install
	PRIVEVO_RELIABILITY=full $(PY) -m pytest -q tests/reliability

install: $(VENV)/.installed

# The lock holds every package, torch's CPU build included (pip finds it on this machine's
# disk, elsewhere on https://download.pytorch.org/whl/cpu), each with its hashes. Then our own
# packages without dependencies, a check that nothing is missing, and the packages that ship
# weights or data (their declared dependencies are wrong, so they come last, without them; a
# reinstall after a lock or pyproject change sets them aside for the check).
$(VENV)/.installed: $(LOCK) requirements/offline.txt pyproject.toml sdk/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --require-hashes -r $(LOCK)
	$(PIP) install -q --no-deps --no-build-isolation -e . -e sdk
	sed -n 's/^\([A-Za-z0-9_.-]*\)==.*/\1/p' requirements/offline.txt \
	  | xargs $(PIP) uninstall -y -q 2>/dev/null
	$(PIP) check
	$(PIP) install -q --no-deps --require-hashes -r requirements/offline.txt
	touch $@

fonts:
	bash scripts/install-fonts.sh

# Debian's Chromium, which tests/browser drives with Playwright (Playwright's own browser
# downloads are not reachable here). Without root it says so, and those tests fail under CI.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "chromium: installing Debian's package"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium: not installed (needs root and apt-get); tests/browser skip outside CI" >&2; \
	  fi; }

data: $(DATA)/mnist/test.npz $(DATA)/bbc/private.jsonl fortunes

# The second text set (benchmarks/quality.py --setting fortunes-llm) comes from Debian's
# fortunes package; no test needs it, so without root it is skipped with a note.
fortunes: | install
	@test -f $(DATA)/fortunes/private.jsonl || { \
	  if [ ! -d /usr/share/games/fortunes ] && [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "fortunes: installing Debian's package"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes >/dev/null; \
	  fi; \
	  if [ -d /usr/share/games/fortunes ]; then \
	    $(PY) scripts/prepare_data.py --data-dir $(DATA) --only fortunes; \
	  else \
	    echo "fortunes: Debian's fortunes package is not installed (needs root and apt-get); skipped" >&2; \
	  fi; }

$(DATA)/mnist/test.npz: | install
	$(PY) scripts/prepare_data.py --data-dir $(DATA) --only mnist

$(DATA)/bbc/private.jsonl: | install
	$(PY) scripts/prepare_data.py --data-dir $(DATA) --only bbc

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint docker/Dockerfile docker/Dockerfile.gateway docker/Dockerfile.worker-cuda

typecheck: install
	$(VENV)/bin/mypy

# Resolves every lock again against today's registry (see scripts/lock.sh); review the diff,
# then run `make test` before committing it.
lock: install
	bash scripts/lock.sh

# The suite in a separate environment resolved from pyproject.toml alone, as a user's plain
# `pip install` would get it today. torch 2.13.0 first, so pip keeps its CPU build.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q torch==2.13.0
	$(LATEST)/bin/python -m pip install -q -e ".[$(EXTRAS)]" -e sdk
	$(LATEST)/bin/python -m pip check
	$(LATEST)/bin/python -m pip install -q --no-deps --require-hashes -r requirements/offline.txt
	touch $(LATEST)/.installed
	$(MAKE) test VENV=$(LATEST)

clean:
	rm -rf $(VENV) $(LATEST) $(DATA) runs .pytest_cache .mypy_cache .ruff_cache
