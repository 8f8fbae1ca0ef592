# Two commands for a newcomer (see README): `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/recsys-moe

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

# Re-runs the install when the project's requirements or the install script change.
$(VENV)/.installed: pyproject.toml scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $@

demo: install
	$(CLI) data synth --config configs/synthetic.yaml --overwrite
	$(CLI) data validate --config configs/synthetic.yaml
	$(CLI) features fit --config configs/synthetic.yaml
	$(CLI) features transform --config configs/synthetic.yaml --overwrite
	$(CLI) train --config configs/synthetic.yaml --fresh
	$(CLI) export --config configs/synthetic.yaml
	$(CLI) score --config configs/synthetic.yaml --model runs/synthetic/export/mmoe/model.onnx \
		--input data/synthetic/raw/impressions/date=2024-01-14 --output runs/synthetic/scores --overwrite

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/bench_synth.py
	$(PY) benchmarks/bench_features.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_synthetic_quality.py

clean:
	rm -rf data/synthetic runs mlflow.db .pytest_cache
