# Two commands do everything, on a fresh machine too:  make demo  |  make test  (make test-all: every test)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch is installed first, pinned, so that pip never resolves an unpinned torch (several GB of CUDA
# packages); on a CUDA machine set TORCH to the build you want, e.g. make demo TORCH="torch==2.13.0".
TORCH  ?= torch==2.13.0

.PHONY: demo checks test test-all install clean tracking-server

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	@echo "installing $(TORCH) and flopsweep into $(VENV) (pip is quiet: a minute or two)"
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q "$(TORCH)" -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	@echo "installing the test tools and the optional extras (hf, server) into $(VENV)"
	$(PY) -m pip install -q "$(TORCH)" -e ".[test,hf,server]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/flopsweep +sweep=quickstart

# the layers and the declared dependencies first (seconds), then the suite: one test worker per core (pytest-xdist),
# a test file per worker at a time (a module's shared fixture made once). make test is the fast lane (the tests
# marked slow left out: real signals, real servers and clusters, long multiruns, the largest presets); make test-all
# runs every test: make test, then the slow ones (`make test test-all` runs the fast lane once, as CI does).
# Python's bytecode written (where PYTHONDONTWRITEBYTECODE is set, as on some CI images): each worker's collection
# rewrites every test file's asserts again otherwise, some 7 s a lane here.
PYTEST := PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -q -n auto --dist loadfile

checks: $(VENV)/.installed-test
	$(VENV)/bin/lint-imports
	$(VENV)/bin/deptry .

test: checks
	$(PYTEST) -m "not slow"

test-all: test
	$(PYTEST) -m slow

# A shared MLflow tracking server on PostgreSQL, in the foreground (Ctrl-C stops it and PostgreSQL); PostgreSQL's
# initdb and pg_ctl must be installed. Everything lives in TRACKING_DIR (outside outputs/ for a team: make clean
# empties outputs/). Options: make tracking-server TRACKING_ARGS="--host 0.0.0.0 -- --allowed-hosts myhost:5000"
# (docs/tracking_server.md); sweeps reach it with tracking=server.
TRACKING_DIR  ?= outputs/tracking-server
TRACKING_ARGS ?=

$(VENV)/.installed-server: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q "$(TORCH)" -e ".[server]"
	touch $@

tracking-server: $(VENV)/.installed-server
	$(PY) -m flopsweep_server run --dir "$(TRACKING_DIR)" $(TRACKING_ARGS)

clean:
	rm -rf $(VENV) outputs/*
