# Two commands do everything on a fresh machine; each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_OUT := demo-report
TRAIN_OUT := trained/vit_digits.safetensors
ABLATIONS_OUT := trained/ablations_digits.json
HOMEWORK_DIR ?= homework
# Where torch comes from: empty = PyPI's default build (CUDA on Linux x86-64, several GB);
# make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU-only build.
TORCH_INDEX ?=

.PHONY: demo test bench notebooks train slides html homework docs clean

$(STAMP): requirements.txt pyproject.toml
	@echo "Setting up $(VENV) once: torch, timm, Jupyter and the rest. This takes several minutes and prints little;"
	@echo "torch from $(if $(TORCH_INDEX),$(TORCH_INDEX),PyPI (on Linux the CUDA build, several GB; TORCH_INDEX=https://download.pytorch.org/whl/cpu for CPU only))."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet torch torchvision --index-url $(TORCH_INDEX))
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

## make train: train the small ViT on the bundled digits (seeded, CPU, a minute or two) into $(TRAIN_OUT),
## and the ablation table (a few minutes more) into $(ABLATIONS_OUT);
## and print how far its test accuracy is from the shipped data/vit_digits.safetensors;
## then notebook 11's data-hunger and transfer sweeps (about 10 minutes more on one idle core) into trained/
train: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m vit_inspect train --dataset digits --out $(TRAIN_OUT) --ablations $(ABLATIONS_OUT) --force
	HF_HUB_OFFLINE=1 $(PY) -m vit_inspect.fine_tuning $(dir $(TRAIN_OUT)) --force

## make slides / make html: the notebooks, executed, as reveal.js slides or web pages with an index.
## Self-contained: reveal.js, require.js, jQuery and MathJax are copied from installed packages into
## $(SLIDES_OUT)/lib (or $(HTML_OUT)/lib), so the pages need no network. EXPORT_ARGS=--cdn loads them from CDNs.
## They refuse a non-empty folder that no export made: FORCE=1 writes into it anyway.
## EXPORT_ARGS="--reveal-prefix DIR --require-js FILE --jquery FILE": other copies of those scripts.
## NOTEBOOKS="notebooks/03_attention_by_hand.ipynb ..." exports only those (default: all, in order).
SLIDES_OUT ?= build/slides
HTML_OUT   ?= build/html
NOTEBOOKS  ?=
EXPORT_FLAGS = $(if $(filter 1 yes true,$(FORCE)),--force)

slides: $(STAMP)
	$(PY) -m vit_inspect.export slides --out $(SLIDES_OUT) $(EXPORT_FLAGS) $(EXPORT_ARGS) $(NOTEBOOKS)

html: $(STAMP)
	$(PY) -m vit_inspect.export html --out $(HTML_OUT) $(EXPORT_FLAGS) $(EXPORT_ARGS) $(NOTEBOOKS)

## make homework: the student versions of the notebooks, in $(HOMEWORK_DIR)/ (FORCE=1 overwrites)
homework: $(STAMP)
	$(PY) scripts/make_homework.py --out $(HOMEWORK_DIR) $(if $(filter 1,$(FORCE)),--force) notebooks/*.ipynb

## make docs: the documentation site in $(DOCS_OUT)/ (MkDocs), offline, from the notebooks executed first
## (in memory: notebooks/ is not changed); FORCE=1 writes into a folder no build made
DOCS_OUT ?= build/site

docs: $(STAMP)
	$(PY) scripts/build_docs.py --execute --out $(DOCS_OUT) $(EXPORT_FLAGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) *.egg-info
