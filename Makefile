# Two entry points: `make demo` (main job on the embedded default) and `make test`.
# Both create .venv and install what they need; reruns skip the install when nothing changed.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean gpu-smoke

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU build these machines carry (see constraints.txt)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/searchgym run --preset small

test: $(STAMP)
	$(BIN)/python -m pytest -q -x --timeout=1200

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# A few verl PPO steps with vLLM on one GPU: a user task from a task file (public-format data made
# from the smoke world), SearchEnvAgentLoop, the tiny model. Needs CUDA + vllm; <= 10 min.
# GPU_SMOKE_ARGS=--dry-run prepares and validates only (runs on CPU). See docs/scale-out.md.
gpu-smoke: $(STAMP)
	timeout 600 $(BIN)/python -m searchgym.training.gpu_smoke --out runs/gpu-smoke $(GPU_SMOKE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
