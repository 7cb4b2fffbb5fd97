# VibeNanoChat: every command a user needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEPTH ?= 12
NGPUS ?= 8
SCALE ?= gpu
TARGET_FLOPS ?=
DEMO_DATA ?= data/demo
DEMO_TOKENS ?= 3000000
DEMO_TOKENIZER ?= bpe:4096
# depth 4, T 256, 4,096-token steps, 128 steps = 0.52 M tokens: the point the LR rule was measured at (nbs/00_config);
# learning rates and weight decay are the library's rules, nothing overridden
DEMO_TRAIN ?= --depth 4 --seq-len 256 --device-batch-size 16 --total-batch-size 4096 --num-iterations 128 --dtype bf16 \
  --eval-every 32 --eval-tokens 32768 --sample-every 128 --save-every 64 --log-every 8
DEMO_PROMPT ?= ROMEO:

.PHONY: help install environment format gpu-check chromium demo data train ddp-train eval run-scaling-law gpu-status kill-gpu test export check-export lab clean-nbs

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): settings.ini setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its dev extras

environment: $(STAMP) ## the install step: .venv with the package, its dev extras and the notebook tools

format: $(STAMP) ## ruff formats the chapters (it reads .ipynb) and the tests, then nbdev_export regenerates the library
	$(VENV)/bin/ruff format nbs tests bench
	$(VENV)/bin/nbdev_export

demo: $(STAMP) ## the main job on its embedded default: data, a small model trained for a few minutes, samples
	$(PY) -m vibenanochat.data $(or $(DATA),auto) --out $(DEMO_DATA) --tokenizer $(DEMO_TOKENIZER) --max-tokens $(DEMO_TOKENS)
	rm -rf logs/demo  # each demo is a fresh run
	$(PY) -m vibenanochat.train --data-dir $(DEMO_DATA) --run-name demo --log-dir logs $(DEMO_TRAIN)
	$(PY) -m vibenanochat.generate --checkpoint logs/demo --prompt "$(DEMO_PROMPT)" --max_length 80 --temperature 0.8 --top_k 50 --num_samples 3

data: $(STAMP) ## prepare FineWeb-Edu sample-10BT (or DATA=path) as tokenized shards in data/
	$(PY) -m vibenanochat.data $(or $(DATA),fineweb-edu) $(DATA_ARGS)

train: $(STAMP) ## one process (CPU or one GPU): make train DEPTH=4 ARGS="--num-iterations 500"
	$(PY) -m vibenanochat.train --depth $(DEPTH) $(ARGS)

ddp-train: $(STAMP) ## torchrun on NGPUS GPUs: make ddp-train NGPUS=8 DEPTH=12 TARGET_FLOPS=1e18
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NGPUS) -m vibenanochat.train --depth $(DEPTH) \
	  $(if $(TARGET_FLOPS),--target-flops $(TARGET_FLOPS)) $(ARGS)

eval: $(STAMP) ## CORE on a checkpoint: make eval CKPT=logs/demo ARGS="--max-per-task 100"
	$(PY) -m vibenanochat.evals --checkpoint $(or $(CKPT),$$(ls -d logs/demo/checkpoints/step_* | tail -1)) $(ARGS)

run-scaling-law: $(STAMP) ## depth x FLOP-budget sweep, then its fits and plots (SCALE=cpu: a tiny sweep on 2 CPU cores)
	$(PY) -m vibenanochat.sweep sweep --scale $(SCALE) --ngpus $(if $(filter cpu,$(SCALE)),1,$(NGPUS)) $(ARGS)

gpu-status: ## GPUs, their memory, and this project's training processes on them
	@command -v nvidia-smi >/dev/null || { echo "no NVIDIA GPU here (nvidia-smi not found)"; exit 0; }; \
	nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total --format=csv; \
	for p in $$(nvidia-smi --query-compute-apps=pid --format=csv,noheader); do \
	  cmd=$$(tr '\0' ' ' < /proc/$$p/cmdline 2>/dev/null); case "$$cmd" in *vibenanochat*train*) echo "pid $$p: $$cmd";; esac; done

gpu-check: $(STAMP) ## the GPU check (versions, bf16+compile tok/s and MFU at depth 12 and 20, FlexAttention, resume, memory); one line without CUDA
	$(PY) bench/gpu_check.py

kill-gpu: ## stop this project's training processes on the GPUs (by pid, nothing else)
	@command -v nvidia-smi >/dev/null || { echo "no NVIDIA GPU here (nvidia-smi not found)"; exit 0; }; \
	for p in $$(nvidia-smi --query-compute-apps=pid --format=csv,noheader); do \
	  cmd=$$(tr '\0' ' ' < /proc/$$p/cmdline 2>/dev/null); \
	  case "$$cmd" in *vibenanochat*train*) echo "stopping pid $$p: $$cmd"; kill -INT $$p;; esac; done

export: $(STAMP) ## regenerate vibenanochat/ from nbs/
	$(VENV)/bin/nbdev_export

check-export: $(STAMP) ## fail if vibenanochat/ differs from what nbs/ export
	@snap=$$(mktemp -d); cp -r vibenanochat $$snap/; $(VENV)/bin/nbdev_export; \
	if ! diff -r -x __pycache__ $$snap/vibenanochat vibenanochat; then \
	  echo "vibenanochat/ was out of sync with nbs/: nbdev_export changed it (review, then commit both)"; rm -rf $$snap; exit 1; fi; \
	rm -rf $$snap; echo "library in sync with notebooks"

chromium: ## Debian's chromium for the widget's browser test (installed with apt-get when missing and root)
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	      || echo "could not install chromium with apt-get: the browser test will skip"; \
	  else echo "chromium is missing and this is not root: the browser test will skip (apt-get install chromium)"; fi; fi

test: $(STAMP) chromium check-export ## set-up plus the whole test suite (notebooks included)
	$(PY) bench/gpu_check.py
	$(PY) -m pytest

lab: $(STAMP) ## JupyterLab on the chapters
	$(VENV)/bin/jupyter lab nbs

clean-nbs: $(STAMP) ## strip notebook metadata noise (nbdev_clean)
	$(VENV)/bin/nbdev_clean
