# The README's commands. Everything is installed into .venv and reused on the next run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# nbgrader runs `alembic` from PATH, so the venv must be on it
export PATH := $(abspath $(VENV))/bin:$(PATH)
# torch and torchvision must come as a matching pair; override for your platform, e.g.
#   make lab TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Test-only peers whose metadata pins would block the resolver (torchattacks pins requests~=2.25).
NODEPS_SPEC ?= torchattacks==3.5.1 nanogcg==0.3.0
LAB_ARGS ?=
# Jupyter refuses to start as root unless told to (containers, CI)
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
# apt-get (make browser) needs root
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# make test runs the suite on this many pytest-xdist workers (the CI machine has 2 cores); each
# worker and each notebook kernel it starts uses one torch thread, so the cores are not oversubscribed
TEST_WORKERS ?= 2
STAMP := $(VENV)/.installed

.PHONY: lab test install fetch doctor grade release bench clean-venv site browser sandbox hub lint

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $(NODEPS_SPEC)
	@# jsonschema's format extra (pulled in by jupyter-events) brings rfc3987-syntax, which compiles 39 lark grammars
	@# whenever jsonschema is imported: 3 s in every process that imports nbformat (each grading checker, nbgrader run,
	@# Jupyter server). Without it jsonschema only skips its "iri" format check.
	$(BIN)/python -m pip uninstall -q -y rfc3987-syntax
	@touch $(STAMP)

install: $(STAMP)

fetch: install
	$(BIN)/course-lib fetch

doctor: install
	$(BIN)/course-lib doctor

## make lab: install (once), fetch the offline models (once), open JupyterLab at the course root
lab: fetch
	$(BIN)/jupyter lab --notebook-dir=. --LabApp.app_settings_dir=$(CURDIR)/jupyter/lab-settings $(ROOT_FLAG) $(LAB_ARGS)

## make browser: Debian's Chromium (and a CJK font for the Chinese labels) for the website's browser test
## (tests/test_site.py); nothing to do once installed
browser:
	@dpkg -s chromium fonts-wqy-zenhei >/dev/null 2>&1 || ! command -v apt-get >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null; }

## make sandbox: bubblewrap (Debian's `bubblewrap`), in which `make grade` runs every submission; nothing to do once installed
sandbox:
	@command -v bwrap >/dev/null || ! command -v apt-get >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq bubblewrap >/dev/null; }

## make hub: configurable-http-proxy (npm, into .hub-node/) for the JupyterHub test (tests/test_hub.py; jupyterhub itself
## comes with the test extras); nothing to do once installed
HUB_NODE := .hub-node
hub:
	@test -x $(HUB_NODE)/node_modules/.bin/configurable-http-proxy || ! command -v npm >/dev/null || \
	  npm install --prefix $(HUB_NODE) --no-audit --no-fund --loglevel=error configurable-http-proxy@5 >/dev/null

## make test: the same set-up, then the whole test suite (library, notebooks, nbgrader round trip, website, hub)
test: fetch browser hub sandbox
	$(BIN)/course-lib doctor
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

## make lint: ruff on course_lib/ and tests/ (pyproject.toml's [tool.ruff]; tests/test_lint.py runs it in make test)
lint: install
	$(BIN)/python -m ruff check course_lib tests

## make release: regenerate assignments/ from solutions/ with nbgrader (instructors)
release: install
	@for a in $$(ls solutions); do $(BIN)/nbgrader generate_assignment $$a --force || exit 1; done

## make grade: autograde every submission in submitted/<student>/<assignment>/ (course-lib grade): each in its own
## bubblewrap sandbox, the tests in a separate checker process, JOBS at a time (default: the CPU budget / threads per
## kernel) or on a Dask cluster (SCHEDULER=tcp://host:8786); feedback/, grades.csv and the report (grading-report.json).
## Run it again after an interruption: only what is missing is graded. STUDENT=/ASSIGNMENT= regrade one; GRADE_ARGS=--force.
## (regenerates the release first: nbgrader keeps the original test cells in gradebook.db)
JOBS ?=
SCHEDULER ?=
STUDENT ?=
ASSIGNMENT ?=
GRADE_ARGS ?=
grade: release sandbox
	@test -d submitted || { echo "Put submissions in submitted/<student>/<assignment>/ first (nbgrader collect or zip_collect)."; exit 1; }
	$(BIN)/course-lib grade . $(if $(JOBS),--jobs $(JOBS)) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) \
	  $(if $(STUDENT),--student $(STUDENT)) $(if $(ASSIGNMENT),--assignment $(ASSIGNMENT)) $(GRADE_ARGS)
	@echo "Scores in grades.csv, feedback in feedback/<student>/<assignment>/, the report above and in grading-report.json."

## make site: the course website in build/site/ (open build/site/index.html): lectures with their outputs, taken
## from the copies the notebook tests executed (only missing or changed lectures are executed again)
## (make site SITE_ARGS="--skip-missing" or SITE_ARGS="--only 02_": a quick preview without executing the rest)
site: fetch
	$(BIN)/python website/build_site.py $(SITE_ARGS)

## make bench: speed of each method against its peer library (not part of make test)
# MALLOC_TOP_PAD_ (glibc): keep 256 MiB of freed memory at the top of the heap instead of handing it back
# to the system after every step and faulting it in again on the next; without it the same plain
# forward + backward loop of scenes-cnn took 49 ms in one run and 68 ms in the next (tests/benchmarks/bench_featurevis.py)
bench: fetch
	MALLOC_TOP_PAD_=268435456 $(BIN)/python -m pytest tests/benchmarks -s -o python_files='bench_*.py' $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
