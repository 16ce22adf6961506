# Everything a fresh machine needs: `make demo` runs the demo, `make test` runs the tests.
# Both create .venv and install fedtl with the pinned stack (constraints.txt: torch==2.13.0 CPU).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: install demo test test-fast lint clean

# -qq: errors still show; setuptools' notice that an install is editable does not.
$(BIN)/.fedtl-installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.fedtl-installed

demo: install
	$(BIN)/fedtl demo --workdir $(DEMO_DIR)

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not integration"

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
