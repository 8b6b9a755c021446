# Fresh machine: `make demo` runs the main job offline; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO := out/demo

.PHONY: venv demo test lint bench clean

# The package's files (modules, templates), without downloaded datasets.
PACKAGE := $(shell find ind_knn_ad -type f -not -path '*/__pycache__/*' -not -path 'ind_knn_ad/datasets/*')

venv: $(VENV)/.linked

$(VENV)/.installed: requirements*.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The package as a tree of links to its files (setuptools' strict editable mode), made
# again when they change: the default mode's import hook costs every start of every
# command (bench/resident.py), and a link tree misses files added after it was made.
$(VENV)/.linked: $(VENV)/.installed $(PACKAGE)
	$(PY) -m pip install --quiet --no-deps --config-settings editable_mode=strict -e .
	touch $@

demo: venv
	$(PY) -m ind_knn_ad.io.sample_data $(DEMO)/data
	$(PY) make_model.py --data-dir $(DEMO)/data/metal_nut_sample --dataset metal_nut_sample \
		--backbone efficientnet_lite2 --model $(DEMO)/model.safetensors --force
	find $(DEMO)/data/metal_nut_sample/test -name '*.png' | sort | \
		xargs $(PY) anomaly_detector.py --model $(DEMO)/model.safetensors > $(DEMO)/scores.csv
	$(PY) -m ind_knn_ad.report.confusion $(DEMO)/scores.csv

test: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

bench: venv
	$(PY) bench/run_all.py

clean:
	rm -rf out build $(VENV)
