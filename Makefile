# unideploy — the two quick-start commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned and installed on its own so that no resolver ever picks an unpinned (multi-GB) build
TORCH := torch==2.14.1 torchvision==0.29.1
# everything else comes from hashed lock files (`make lock` regenerates them; see tools/lock.py), installed without
# dependency resolution so that a fresh machine gets exactly the versions CI tested
LOCK_DEMO := requirements/demo.lock
LOCK_DEV := requirements/dev.lock
LOCKED := $(PIP) install -q --require-hashes --no-deps -r

.PHONY: demo test setup setup-dev lint lock clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

setup: $(PY)
	$(LOCKED) $(LOCK_DEMO)
	$(PIP) install -q --no-deps -e .

setup-dev: $(PY)
	$(PIP) install -q $(TORCH)
	$(LOCKED) $(LOCK_DEV)
	$(PIP) install -q --no-deps -e .
	@# one OpenCV only: an environment made before the lock may still hold Ultralytics' opencv-python, whose cv2
	@# files overlap opencv-python-headless's (removing one breaks the other, hence the reinstall)
	@if $(PIP) show opencv-python >/dev/null 2>&1; then \
		$(PIP) uninstall -y -q opencv-python && \
		$(PIP) install -q --no-deps --force-reinstall "$$(grep -m1 '^opencv-python-headless==' $(LOCK_DEV) | cut -d' ' -f1)"; \
	fi

# regenerate requirements/*.lock from pyproject.toml (keeps locked versions that still fit; UPGRADE=1 takes the newest)
lock: $(PY)
	$(PIP) install -q uv==0.13.9
	$(PY) tools/lock.py --python $(PY) $(if $(UPGRADE),--upgrade,)

demo: setup
	$(VENV)/bin/unideploy demo

lint: setup-dev
	$(PY) -m ruff check src tests benchmarks tools examples

test: setup-dev lint
	YOLO_OFFLINE=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) out/ .pytest_cache
