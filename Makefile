# Two commands do everything on a fresh machine; each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_OUT := demo-report
# Where torch comes from: empty = PyPI's default build (CUDA on Linux x86-64, several GB);
# make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU-only build.
TORCH_INDEX ?=

.PHONY: demo test bench notebooks clean

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

clean:
	rm -rf $(VENV) $(DEMO_OUT) *.egg-info
