# opso: two commands on a fresh machine.
#   make demo   creates .venv, installs opso, runs the demo and prints where the results are
#   make test   creates .venv if needed, installs opso with its test extras, runs the whole test suite
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench clean venv lock

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -c requirements/constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/opso demo $(if $(OUT),--out $(OUT),)

test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Benchmarks (see benchmarks/README.md); versus_opensoundscape.py builds OpenSoundscape 0.13.2's own
# environment under .bench/ on its first run (about 5 minutes).
bench: $(STAMP)
	$(PY) benchmarks/versus_opensoundscape.py --create-env
	$(PY) benchmarks/pipeline_scaling.py
	$(PY) benchmarks/cnn_inference_throughput.py
	$(PY) benchmarks/spectrogram_throughput.py
	$(PY) benchmarks/birdnet_throughput.py --create-env

# Re-pin requirements/constraints.txt after changing dependencies in pyproject.toml (needs the network).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet $(TORCH)
	.lock-venv/bin/pip install --quiet 'python-dateutil<3' -e '.[dev]'
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^opso' > requirements/constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache opso-demo
