# sdlab — two commands: `make lab` (the course on the offline model) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sdlab-installed
# torch and torchvision must come as this pair (face repair needs torchvision); installing
# them first means no later requirement pulls another multi-GB torch
TORCH  := torch==2.14.1 torchvision==0.29.1
PIP    := $(BIN)/python -m pip --disable-pip-version-check
# the gfpgan package (face repair's second backend) builds against the torch above, so it
# goes in without build isolation and without its training-only dependencies
GFPGAN := basicsr==1.4.2 gfpgan==1.3.8 facexlib==0.3.0
HOST   ?= 127.0.0.1
PORT   ?= 8888

.PHONY: install lab test check lint course clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) install --quiet setuptools wheel
	$(PIP) install --quiet --no-build-isolation --no-deps $(GFPGAN)
	$(PIP) install --quiet addict future lmdb yapf filterpy
	touch $@

install: $(STAMP)

lab: install
	@echo "Open the URL printed below (with its token) and start with notebooks/00_setup.ipynb"
	$(BIN)/jupyter lab --no-browser --ip=$(HOST) --port=$(PORT) $$([ "$$(id -u)" = 0 ] && echo --allow-root) \
		--ServerApp.root_dir=$(CURDIR) --LabApp.default_url=/lab/tree/notebooks/00_setup.ipynb

# two workers, one thread each (two torch processes with two threads each on two cores would
# fight over them); each takes the next test when it is done with one, and the tests of an xdist group
# (those sharing a module's fixture, or inductor's compiled kernels) go to one worker (--dist loadgroup;
# tests/conftest.py orders them, the slow first)
PYTEST := SDLAB_PROGRESS=0 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup

test: install lint
	$(PYTEST) --durations=15

# the quick subset for every change: lint, and the tests not marked slow (no notebooks, no browser)
check: install lint
	$(PYTEST) -m "not slow"

lint: install
	$(BIN)/ruff check sdlab tests

# run the completed notebooks in place (the tests compare the NBVAL_CHECK_OUTPUT cells with these), then
# rebuild the blank ones
course: install
	cd solutions && for nb in [0-9][0-9]_*.ipynb; do \
		SDLAB_PROGRESS=0 ../$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=1200 $$nb || exit 1; done
	$(BIN)/sdlab course build

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
