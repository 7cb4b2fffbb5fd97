# VibeNanoChat: every command a user needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEPTH ?= 4

.PHONY: help install demo test export check-export lab clean-nbs

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): settings.ini setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its dev extras

demo: $(STAMP) ## the main job on its embedded default (CPU is fine)
	@$(PY) -c 'import torch; from vibenanochat.config import GPTConfig, depth_table, format_table; from vibenanochat.model import GPT; \
	print(format_table(depth_table())); m = GPT(GPTConfig.from_depth($(DEPTH), seq_len=256)); x = torch.randint(0, 50257, (2, 256)); \
	loss = m(x, x); loss.backward(); \
	print(f"depth-$(DEPTH) model: {sum(p.numel() for p in m.parameters()):,} parameters, {m.estimate_flops():,} FLOPs/token; forward+backward OK, loss {loss.item():.3f}"); \
	print("Training arrives with the trainer chapter (nbs/09_trainer).")'

export: $(STAMP) ## regenerate vibenanochat/ from nbs/
	$(VENV)/bin/nbdev_export

check-export: $(STAMP) ## fail if vibenanochat/ differs from what nbs/ export
	@snap=$$(mktemp -d); cp -r vibenanochat $$snap/; $(VENV)/bin/nbdev_export; \
	if ! diff -r -x __pycache__ $$snap/vibenanochat vibenanochat; then \
	  echo "vibenanochat/ was out of sync with nbs/: nbdev_export changed it (review, then commit both)"; rm -rf $$snap; exit 1; fi; \
	rm -rf $$snap; echo "library in sync with notebooks"

test: $(STAMP) check-export ## set-up plus the whole test suite (notebooks included)
	$(PY) -m pytest

lab: $(STAMP) ## JupyterLab on the chapters
	$(VENV)/bin/jupyter lab nbs

clean-nbs: $(STAMP) ## strip notebook metadata noise (nbdev_clean)
	$(VENV)/bin/nbdev_clean
