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

# The synthetic feed is generated once (it is seeded: the same every time); the pipeline run is
# keyed by as-of date and config hash, so a second `make demo` finds every step done.
demo: install
	test -f data/synthetic/raw/users.parquet || $(CLI) data synth --config configs/synthetic.yaml --overwrite
	$(CLI) data validate --config configs/synthetic.yaml
	$(CLI) pipeline run --config configs/synthetic.yaml

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: install
	$(PY) benchmarks/bench_synth.py
	$(PY) benchmarks/bench_features.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_synthetic_quality.py
	$(PY) benchmarks/bench_onnx.py
	$(PY) benchmarks/bench_score.py
	$(PY) benchmarks/bench_sharding.py
	$(PY) benchmarks/bench_evaluate.py

clean:
	rm -rf data/synthetic runs mlflow.db .pytest_cache
