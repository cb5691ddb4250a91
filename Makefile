# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PEERS := .peers
NPM_PEERS := @tursodatabase/sync@0.7.2 @tursodatabase/cli-linux-x64-gnu@0.7.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: venv peers demo test lint typecheck unit bench clean proto

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	rm -f $(VENV)/.installed-*; touch $(STAMP)

venv: $(STAMP)

$(PEERS)/.installed: Makefile
	mkdir -p $(PEERS)
	test -f $(PEERS)/package.json || echo '{"private": true}' > $(PEERS)/package.json
	cd $(PEERS) && npm install --no-audit --no-fund --silent $(NPM_PEERS)
	touch $@

peers: venv $(PEERS)/.installed

demo: venv
	$(BIN)/python -m turso_sync.cli.demo

lint: venv
	$(BIN)/ruff check turso_sync tests bench
	$(BIN)/ruff format --check turso_sync tests bench

typecheck: venv
	$(BIN)/mypy turso_sync

unit: venv
	$(BIN)/pytest -q tests/unit

test: peers lint typecheck
	$(BIN)/pytest -q -ra tests

bench: peers
	$(BIN)/python -m bench.run_all

# Regenerate the protobuf module of the sync wire format (protoc comes from grpcio-tools,
# installed into the venv only for this; the runtime needs just the protobuf package).
proto: venv
	$(BIN)/python -m pip install -q grpcio-tools
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. turso_sync/sync/wire/pull_updates.proto

clean:
	rm -rf $(VENV) $(PEERS) .pytest_cache .mypy_cache .ruff_cache
