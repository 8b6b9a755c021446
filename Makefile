# Fresh machine: `make demo` runs the main job offline; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO := out/demo

.PHONY: venv demo test lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements*.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	# strict: a tree of links, where the default editable mode installs an import hook that
	# every start of every command pays for (bench/resident.py).
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
	rm -rf out $(VENV)
