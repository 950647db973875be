# Two commands on a fresh machine with only Python 3 and pip:
#   make train   bootstrap .venv, install trainkit, train the default recipe, print the result
#   make test    bootstrap .venv, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed before the package so that pip does not resolve `torch` to a multi-GB CUDA build
# on machines that only have a CPU; override with e.g. TORCH_SPEC='torch==2.13.0' or 'torch'.
TORCH_SPEC ?= torch==2.13.0
# LitData declares torchvision, which breaks torchmetrics beside the CPU torch: installed without
# its declared requirements, its real ones come with the `streaming` extra
LITDATA_SPEC ?= litdata==0.2.76
RECIPE ?= recipes/digits_mlp.yaml
PYTEST_ARGS ?=
STAMP := $(VENV)/.trainkit-installed

.PHONY: train test test-all bootstrap clean

bootstrap: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev,streaming]'
	$(BIN)/python -m pip install -q --no-deps "$(LITDATA_SPEC)"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/trainkit fit --config $(RECIPE)

# the default suite (under 10 minutes on 2 cores); tests marked slow are left out
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# every test, the slow ones (SLURM cluster, kill loops, torchrun restarts) included
test-all: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
