# Two commands do all the set-up on a fresh machine: `make demo` and `make test` (see README.md).
# Both create .venv and install the project into it; TORCH_SPEC picks the torch build
# (default: the CPU wheel; e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m pipeline.train --config configs/smoke.yaml --name demo-smoke --local
	$(PY) -m pipeline.evaluate --checkpoint runs/demo-smoke/best.pt --out runs/demo-smoke/eval

bench: $(STAMP)
	$(PY) benchmarks/meta_step.py

clean:
	rm -rf $(VENV) runs *.egg-info
