# Set-up and the two everyday commands. Everything installs into .venv.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: train test bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# The CPU build of torch first: a bare 'torch' requirement would pull a CUDA build.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test]"
	touch $@

# Main job: build the digits LMDBs if missing, then train LeNet on them.
train: $(VENV)/.installed
	$(PY) examples/digits/make_digits_lmdb.py --out examples/digits
	$(VENV)/bin/brewnet train --solver examples/digits/lenet_solver.prototxt

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 -q

bench: $(VENV)/.installed
	$(PY) bench/lenet_step.py
