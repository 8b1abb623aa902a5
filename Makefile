# Two entry points for a newcomer: `make demo` (the main job) and `make test`.
# Each creates .venv on first use; nothing outside the repository is touched.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The drone's install: JetPack 5's Python 3.8 with the runtime set only (no torch, no onnx), for the
# tests that run the on-device commands there; built when pyenv has a 3.8, skipped otherwise.
PY38 ?= $(shell ls -d "$$(pyenv root 2>/dev/null)"/versions/3.8*/bin/python3.8 2>/dev/null | tail -1)
DRONE := .venv-drone
DRONE_STAMP := $(DRONE)/.installed

.PHONY: demo test lint bench clean drone

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

$(DRONE_STAMP): pyproject.toml
	@if [ -n "$(PY38)" ]; then \
	  $(PY38) -m venv $(DRONE) && \
	  $(DRONE)/bin/python -m pip install --quiet 'numpy<2' onnxruntime opencv-python-headless tomli && \
	  $(DRONE)/bin/python -m pip install --quiet --no-deps -e . && touch $(DRONE_STAMP); \
	else echo "no Python 3.8 (pyenv): the drone-install tests will be skipped"; fi

drone: $(DRONE_STAMP)

test: $(STAMP) lint drone
	GLIMMER_DRONE_PYTHON=$$([ -f $(DRONE_STAMP) ] && echo $(CURDIR)/$(DRONE)/bin/python) $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/vermin --no-tips --violations -t=3.8- runtime/

clean:
	rm -rf $(VENV) $(DRONE) demo .pytest_cache
