# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PEERS := .peers
NPM_PEERS := @tursodatabase/sync@0.7.2 @tursodatabase/cli-linux-x64-gnu@0.7.0
PIP_VERSION := 26.3
# The install builds the optional compiled helpers (setup.py, turso_sync/_speedups.c, _fastvfs.c): a change
# to any installs again, so the module in the folder is never older than its source.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt setup.py turso_sync/_speedups.c turso_sync/_fastvfs.c | sha1sum | cut -c1-12)

.PHONY: venv peers demo test lint typecheck unit bench clean proto constraints fuzz sim

$(STAMP): pyproject.toml constraints.txt setup.py turso_sync/_speedups.c turso_sync/_fastvfs.c
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,bench]'
	rm -f $(VENV)/.installed-*; touch $(STAMP)

venv: $(STAMP)

$(PEERS)/.installed: Makefile
	mkdir -p $(PEERS)
	test -f $(PEERS)/package.json || echo '{"private": true}' > $(PEERS)/package.json
	cd $(PEERS) && npm install --no-audit --no-fund --silent $(NPM_PEERS)
	touch $@

peers: venv $(PEERS)/.installed

demo: venv
	$(BIN)/python examples/demo.py

lint: venv
	$(BIN)/ruff check turso_sync tests bench examples
	$(BIN)/ruff format --check turso_sync tests bench examples

typecheck: venv
	$(BIN)/mypy turso_sync examples

# The fast tier (docs/testing.md): no server, no peer, no network (tests/unit/conftest.py refuses
# it), a minute per test at most; the whole tier well under a minute.
unit: venv
	$(BIN)/pytest -q tests/unit

# The suites that run the compiled helper's functions (WAL checksums: written, recovered, scanned,
# installed; the file-control router; the page and WAL frame readers; pages sealed in a batch; an install's
# wal-index written in place), run a second time by `make test` on their pure-Python twins
# (about half a minute).
PURE_PYTHON_TESTS := tests/unit/test_walformat.py tests/unit/test_compiled.py tests/unit/test_install.py \
	tests/unit/test_vfs_fast_paths.py tests/unit/test_wal_scan_cache.py tests/unit/test_encryption.py \
	tests/unit/test_rekey_wal_headers.py tests/unit/test_install_recovery_handover.py tests/unit/test_file_control_router.py \
	tests/unit/test_page_reader.py tests/unit/test_cursor_fast.py tests/unit/test_engine_fast.py tests/unit/test_dbapi_differential.py \
	tests/integration/test_engine_walindex.py tests/unit/test_install_frames.py tests/unit/test_wal_frame_writer.py \
	tests/unit/test_seal_pages.py tests/unit/test_walindex_in_place.py tests/unit/test_fastvfs.py

# Everything: the checks, the fast tier (a failure there stops here, in a minute), the WAL's suites
# again with the compiled helper refused, then the rest, listing the slowest tests so CI time is
# watched as the suites grow.
test: peers lint typecheck
	$(BIN)/pytest -q -ra tests/unit
	TURSO_SYNC_PURE_PYTHON=1 $(BIN)/pytest -q -ra $(PURE_PYTHON_TESTS)
	$(BIN)/pytest -q -ra --durations=20 tests --ignore=tests/unit

# A longer campaign of the route fuzzer (make test runs it for a fixed budget): TURSO_FUZZ_EXAMPLES
# examples per test, seeded by TURSO_FUZZ_SEED (a failure replays with the same seed).
fuzz: venv
	TURSO_FUZZ_EXAMPLES=$${TURSO_FUZZ_EXAMPLES:-5000} TURSO_FUZZ_SEED=$${TURSO_FUZZ_SEED:-$$(date +%s)} \
	  $(BIN)/pytest -q tests/fuzz --hypothesis-show-statistics

# The simulator's long campaign (make test runs its CI set, tests/sim): the named regression seeds,
# SEEDS seeds x 200 steps from FIRST, multi-process runs with kill -9, and the differential checks.
SEEDS ?= 100
FIRST ?= 0
sim: peers
	$(BIN)/python -m tests.sim --regressions
	$(BIN)/python -m tests.sim --seeds $(SEEDS) --first $(FIRST) --steps 200
	$(BIN)/python -m tests.sim --multiproc --seeds 3 --seconds 60
	$(BIN)/python -m tests.sim.differential --seeds 5

bench: peers
	$(BIN)/python -m bench.run_all

# Regenerate the protobuf module of the sync wire format (protoc comes from grpcio-tools,
# installed into the venv only for this, pinned, with protobuf held at constraints.txt's version;
# the runtime needs just the protobuf package). 1.85.1 bundles the protoc that wrote the checked-in
# module ("Protobuf Python Version: 7.35.1" in its header).
GRPCIO_TOOLS_VERSION = 1.85.1
proto: venv
	$(BIN)/python -m pip install -q grpcio-tools==$(GRPCIO_TOOLS_VERSION) -c constraints.txt
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. turso_sync/wire/pull_updates.proto

# Re-resolve the compatible ranges of pyproject.toml in a scratch venv and record the exact set.
constraints:
	rm -rf .venv-constraints && $(PY) -m venv .venv-constraints
	.venv-constraints/bin/python -m pip install -q pip==$(PIP_VERSION)
	.venv-constraints/bin/python -m pip install -q '.[test,bench]'
	(echo '# Exact versions for CI and the demo (pip install -c constraints.txt). Regenerate with `make constraints`.'; \
	 .venv-constraints/bin/python -m pip freeze --exclude-editable | grep -v '^turso-sync') > constraints.txt
	rm -rf .venv-constraints build

clean:
	rm -rf $(VENV) $(PEERS) .pytest_cache .mypy_cache .ruff_cache build turso_sync/_speedups.*.so turso_sync/_fastvfs.*.so
