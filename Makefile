# Two commands a new user needs: `make demo` and `make test`.
# TORCH_SPEC lets GPU users pick another build, e.g. make test TORCH_SPEC="torch --index-url ...".
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.backdoorlab-installed

.PHONY: demo test test-all venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,plot,serve,bench]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/backdoorlab demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Default tests plus the slow real-data tests (needs ../shared/data).
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) build dist src/*.egg-info
