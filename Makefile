# attntune: `make demo` runs the main job, `make test` runs the tests; both install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean bench browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The pinned CPU build lies on this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the browser tests (MLflow UI, reports); never a downloaded browser.
browser:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

demo: install
	$(BIN)/attntune run examples/demo.yaml

test: install browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=25 -p no:cacheprovider tests

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) attntune-runs mlflow.db mlartifacts .pytest_cache
