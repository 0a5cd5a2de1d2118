# Two entry points: `make demo` (the main job end to end) and `make test` (the full suite).
# Both create .venv and install what they need: torch 2.13.0, the CPU-only build unless an NVIDIA driver
# (nvidia-smi) is present. Override the torch spec with e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
# The CPU-only wheel index where it can be reached (asked only when torch must be installed); where it cannot,
# pip looks in its configured indexes and wheel folders instead of retrying an unreachable index for every package.
CPU_INDEX = $(shell $(PYTHON) -c "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/cpu/', \
	timeout=5)" 2>/dev/null && echo --index-url https://download.pytorch.org/whl/cpu)
TORCH_SPEC ?= torch==2.13.0 $(if $(shell command -v nvidia-smi 2>/dev/null),,$(CPU_INDEX))
BIN := $(VENV)/bin
DEMO := demo
INSTALLED := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(INSTALLED)

# Reinstalled only when pyproject.toml changes (the install itself took 10-20 s even with nothing to do).
$(INSTALLED): $(BIN)/python pyproject.toml
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

# The demo: planted synthetic CTR data, CrossNet (DCNv2) without a DNN, with a parallel and with a stacked DNN
# (docs/results.md's small-data settings, early stopping on validation AUC), then the collapse report of the base
# model and the comparison; both end on a plain-language verdict.
DEMO_TRAIN := --model crossnet --emb-dim 10 --dnn 200,200,200 --dropout 0.2 --batch-size 512 --lr 0.002 \
	--epochs 20 --patience 2

demo: install
	rm -rf $(DEMO)
	$(BIN)/dcollapse synth ctr --out $(DEMO)/raw.csv --rows 40000 --fields 12 --seed 0
	$(BIN)/dcollapse preprocess $(DEMO)/raw.csv --label label --out $(DEMO)/synth-ctr
	$(BIN)/dcollapse train $(DEMO)/synth-ctr $(DEMO_TRAIN) --arch none --out $(DEMO)/crossnet.pt
	$(BIN)/dcollapse train $(DEMO)/synth-ctr $(DEMO_TRAIN) --arch parallel --out $(DEMO)/crossnet-parallel.pt
	$(BIN)/dcollapse train $(DEMO)/synth-ctr $(DEMO_TRAIN) --arch stacked --out $(DEMO)/crossnet-stacked.pt
	$(BIN)/dcollapse spectrum $(DEMO)/crossnet.pt --plot $(DEMO)/crossnet-spectrum.png
	$(BIN)/dcollapse compare $(DEMO)/crossnet.pt $(DEMO)/crossnet-parallel.pt $(DEMO)/crossnet-stacked.pt \
		--plot $(DEMO)/spectra.png
	@echo
	@echo "Next: open $(DEMO)/spectra.png (eigenvalues of cov(Z) per variant) and $(DEMO)/crossnet-spectrum.png"
	@echo "(each field's table), and read docs/concepts.md for what IA and RankMe mean and when to worry."
	@echo "The command is $(BIN)/dcollapse: 'source $(BIN)/activate' puts it on your PATH."

# ruff (lint and format) and mypy on the library; `make test` runs the two ruff checks and the whole suite (CI).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2

# The inner loop: everything but the tests marked @pytest.mark.slow.
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 -m "not slow"

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
