# Two commands do everything on a fresh machine; each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_OUT := demo-report
TRAIN_OUT := trained/vit_digits.safetensors

.PHONY: demo test bench notebooks train clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

## make demo: the CLI report on a bundled photo (the demo folder is ours to overwrite)
demo: $(STAMP)
	$(PY) -m vit_inspect report data/chelsea.png --out $(DEMO_OUT) --force

## make test: pytest for the package and nbval over every notebook, offline
test: $(STAMP)
	HF_HUB_OFFLINE=1 MPLBACKEND=Agg $(PY) -m pytest

## make bench: speed and memory figures, as side-by-side ratios
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m vit_inspect.bench

## make notebooks: re-execute the notebooks, keeping only weight-independent outputs
notebooks: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) scripts/execute_notebooks.py notebooks/*.ipynb

## make train: train the small ViT on the bundled digits (seeded, CPU, about a minute) into $(TRAIN_OUT),
## and print how far its test accuracy is from the shipped data/vit_digits.safetensors
train: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m vit_inspect train --dataset digits --out $(TRAIN_OUT) --force

clean:
	rm -rf $(VENV) $(DEMO_OUT) *.egg-info
