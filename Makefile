# unideploy — the two quick-start commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned and installed on its own so that no resolver ever picks an unpinned (multi-GB) build
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test setup setup-dev lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

setup: $(PY)
	$(PIP) install -q -e ".[openvino,plot,quantize]"

setup-dev: $(PY)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q $(TORCH) -e ".[dev]"

demo: setup
	$(VENV)/bin/unideploy demo

lint: setup-dev
	$(PY) -m ruff check src tests benchmarks tools examples

test: setup-dev lint
	YOLO_OFFLINE=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) out/ .pytest_cache
