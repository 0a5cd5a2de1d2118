# Two entry points: `make demo` (the main job end to end) and `make test` (the full suite).
# Both create .venv and install what they need. Override the torch spec with e.g.
#   make test TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO := demo

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev]"

# The demo's model settings are the ones docs/results.md uses for small data (the paper's, scaled down).
DEMO_TRAIN := --model fm --epochs 4 --emb-dim 10 --dnn 200,200,200 --dropout 0.1 --batch-size 256

demo: install
	rm -rf $(DEMO)
	$(BIN)/dcollapse synth ctr --out $(DEMO)/raw.csv --rows 60000 --fields 12 --seed 0
	$(BIN)/dcollapse preprocess $(DEMO)/raw.csv --format csv --label label --out $(DEMO)/data
	$(BIN)/dcollapse train $(DEMO)/data $(DEMO_TRAIN) --arch none --out $(DEMO)/fm.pt
	$(BIN)/dcollapse train $(DEMO)/data $(DEMO_TRAIN) --arch parallel --out $(DEMO)/deepfm.pt
	$(BIN)/dcollapse train $(DEMO)/data $(DEMO_TRAIN) --arch stacked --out $(DEMO)/nfm.pt
	$(BIN)/dcollapse spectrum $(DEMO)/deepfm.pt
	$(BIN)/dcollapse compare $(DEMO)/fm.pt $(DEMO)/deepfm.pt $(DEMO)/nfm.pt --plot $(DEMO)/spectra.png

lint: install
	$(BIN)/ruff check .

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
