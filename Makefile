# Convenience targets; every one installs the pinned venv first (once) and uses it.
#   make run      the whole pipeline on config/config.yaml (Snakemake)
#   make test     the test suite (pytest)
#   make install  only the venv: python3 -m venv .venv + pip install -c constraints.txt -e ".[pipeline,dev]"
#                 TORCH_INDEX=URL first installs the pinned torch from that index, e.g. the CPU build:
#                 make install TORCH_INDEX=https://download.pytorch.org/whl/cpu   (README.md, "Which torch build")
#   make dry-run  the jobs the pipeline would run; make lint: snakemake --lint
# CONFIG=config/experiments/bench.yaml make run   runs another config file.
# make run TARGETS="results/x/.../metrics.json"     builds only those outputs (default: the whole DAG)
# make run SNAKEMAKE_ARGS="--profile slurm"         passes more options to Snakemake
# `make run` resumes a stopped run: it passes --rerun-incomplete (meta-training continues from
# checkpoint.pt, which is not a declared output; README.md, "Quick start").

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.purer-installed
CONFIG ?= config/config.yaml
TARGETS ?=
SNAKEMAKE_ARGS ?=
TORCH_INDEX ?=
# the venv's `purer` must be on PATH for the pipeline's jobs
RUN := env PATH="$(CURDIR)/$(VENV)/bin:$$PATH" DVC_NO_ANALYTICS=1

.PHONY: install run dry-run lint test

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(VENV)/bin/pip install -c constraints.txt --index-url $(TORCH_INDEX) torch)
	$(VENV)/bin/pip install -c constraints.txt -e ".[pipeline,dev]"
	touch $(STAMP)

# targets come before --configfile, which would read them as more config files
run: $(STAMP)
	$(RUN) $(VENV)/bin/snakemake $(TARGETS) --cores all --rerun-incomplete $(SNAKEMAKE_ARGS) --configfile $(CONFIG)

dry-run: $(STAMP)
	$(RUN) $(VENV)/bin/snakemake $(TARGETS) --cores all --rerun-incomplete $(SNAKEMAKE_ARGS) -n --configfile $(CONFIG)

lint: $(STAMP)
	$(RUN) $(VENV)/bin/snakemake --lint

test: $(STAMP)
	$(RUN) $(VENV)/bin/pytest
