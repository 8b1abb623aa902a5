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
# The runtime's own tests (tests/runtime) on the drone's floor: the same Python 3.8 with the oldest
# numpy, ONNX Runtime and OpenCV that pyproject.toml allows, so a newer-only API in glimmer.runtime
# fails here rather than on the drone. numpy 1.21.6: ONNX Runtime 1.16 requires it (1.21.0-1.21.5
# cannot coexist with it); OpenCV 4.8.0.76: 4.8.0.74 is yanked. Test-only additions, never torch:
# onnx (the tests build models with onnx.helper; 1.14 writes the IR and opsets ORT 1.16 reads),
# pytest 8.3 (the last for 3.8), and what glimmer-check's tests need from [check] (tomlkit,
# faster-coco-eval, pyyaml) at their last 3.8 releases; the alert sinks' pymavlink, pyserial and
# paho-mqtt at the releases JetPack 5 gets; jsonschema 4.23 (the last for 3.8) for the result
# schemas. Tests needing torch or ultralytics skip there.
PY38VENV := .venv-py38
PY38_STAMP := $(PY38VENV)/.installed
PY38_PINS := numpy==1.21.6 onnxruntime==1.16.0 opencv-python-headless==4.8.0.76 tomli==2.0.0 \
	onnx==1.14.1 pytest==8.3.5 faster-coco-eval==1.7.2 tomlkit==0.13.3 pyyaml==6.0.3 \
	pymavlink==2.4.49 pyserial==3.5 paho-mqtt==2.1.0 jsonschema==4.23.0

.PHONY: demo test lint bench clean drone py38

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# TensorRT's Python API stubs for the conformance test, kept as a wheel file: installed, their
	# tensorrt/ folder would import as an empty namespace package that looks like TensorRT.
	$(PY) -m pip download --quiet --no-deps -d $(VENV)/stubs tensorrt-stubs==10.13.0.35.1
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

$(DRONE_STAMP): pyproject.toml
	@if [ -n "$(PY38)" ]; then \
	  $(PY38) -m venv $(DRONE) && \
	  $(DRONE)/bin/python -m pip install --quiet 'numpy<2' onnxruntime opencv-python-headless tomli 'tomlkit>=0.11,<0.14' && \
	  $(DRONE)/bin/python -m pip install --quiet --no-deps -e . && touch $(DRONE_STAMP); \
	else echo "no Python 3.8 (pyenv): the drone-install tests will be skipped"; fi

drone: $(DRONE_STAMP)

# Rebuilt from scratch when this file (its pins) or pyproject.toml changes: no package from an older
# set lingers.
$(PY38_STAMP): pyproject.toml Makefile
	@if [ -n "$(PY38)" ]; then \
	  rm -rf $(PY38VENV) && $(PY38) -m venv $(PY38VENV) && \
	  $(PY38VENV)/bin/python -m pip install --quiet $(PY38_PINS) && \
	  $(PY38VENV)/bin/python -m pip install --quiet --no-deps -e . && touch $(PY38_STAMP); \
	else echo "no Python 3.8 (pyenv): the runtime's Python 3.8 suite will be skipped"; fi

py38: $(PY38_STAMP)

# Both suites run even when the first fails, and either failing fails the target. A suite that
# collects nothing (pytest's exit 5) is named, for .ci/run to report. The 3.8 suite keeps out of
# .pytest_cache, which the main suite's newer pytest owns.
test: $(STAMP) lint drone py38
	@main=0; py38=0; \
	echo "== main suite ($(PY))"; \
	GLIMMER_DRONE_PYTHON=$$([ -f $(DRONE_STAMP) ] && echo $(CURDIR)/$(DRONE)/bin/python) \
	  $(PY) -m pytest -q || main=$$?; \
	if [ -f $(PY38_STAMP) ]; then \
	  echo "== runtime suite on Python 3.8, oldest supported numpy/onnxruntime/opencv ($(PY38VENV))"; \
	  $(PY38VENV)/bin/python -m pytest -q tests/runtime -p no:cacheprovider || py38=$$?; \
	else echo "no Python 3.8 (pyenv): the runtime's Python 3.8 suite is skipped"; fi; \
	[ $$main -ne 5 ] || echo "make test: the main suite collected no tests (pytest exit 5)" >&2; \
	[ $$py38 -ne 5 ] || echo "make test: the Python 3.8 suite collected no tests (pytest exit 5)" >&2; \
	if [ $$main -ne 0 ] || [ $$py38 -ne 0 ]; then \
	  echo "make test: main suite exit $$main, Python 3.8 suite exit $$py38" >&2; exit 1; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/vermin --no-tips --violations -t=3.8- runtime/

clean:
	rm -rf $(VENV) $(DRONE) $(PY38VENV) demo .pytest_cache
