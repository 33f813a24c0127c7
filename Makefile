# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench bench-quick clean bytecode

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# compiled once here: every rank and watchdog a run starts would otherwise compile the package anew
# (editable install; PYTHONDONTWRITEBYTECODE may be set)
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q hpc_edge control_tower launchers

demo: $(STAMP) bytecode
	$(BIN)/hpc-edge run examples/hello.yaml --ranks 2 --fresh

test: $(STAMP) bytecode
	$(BIN)/python -m pytest -ra

bench: $(STAMP) bytecode
	$(BIN)/python bench/run.py

bench-quick: $(STAMP) bytecode
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) .hpc-edge .pytest_cache
