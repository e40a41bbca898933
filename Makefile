PYTHON ?= python3
VENV ?= .venv

.PHONY: install test backtest benchmarks

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Runs the whole suite; pytest's exit code 5 (no tests collected) is turned into a failure.
test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -p no:cacheprovider; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

backtest: $(VENV)/.installed
	$(VENV)/bin/grove-autoscaler backtest

benchmarks: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/run.py
