# `make test` is what CI runs (.ci/run): it builds .venv itself on a fresh machine.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two pytest workers, one per core of a small machine; each test file runs on one.
test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile

demo: $(STAMP)
	$(PY) -m normlab.sweep --config=experiments/batch_size.py --workdir=runs/batch_size --parallel=2

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m scripts.bench

clean:
	rm -rf $(VENV) runs
