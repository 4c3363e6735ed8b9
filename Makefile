# The two commands a new user runs: `make demo` and `make test`.
# scripts/setup.sh installs what is missing (fast when nothing is) and writes
# .cache/env.sh, which every target sources.
SHELL := /bin/bash
ENV := source .cache/env.sh
CARGO_FLAGS := --release --locked

.PHONY: setup build demo test lint bench fuzz clean

setup:
	@bash scripts/setup.sh

build: setup
	@$(ENV) && cargo build $(CARGO_FLAGS) --workspace

demo: build
	@$(ENV) && ./target/release/beamflow demo

lint: setup
	@$(ENV) && cargo fmt --all -- --check
	@$(ENV) && cargo clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings

# The batch tests start a three-node Slurm (scripts/slurm-cluster.sh), the
# store tests a private PostgreSQL (scripts/postgres.sh); both are stopped
# afterwards whatever the outcome. The server suites then run again with
# their stores in PostgreSQL (BEAMFLOW_TEST_STORE, tests/support/harness.rs).
PG_SUITES := --test e2e --test reliability --test tls
test: setup lint
	@$(ENV) && cargo test $(CARGO_FLAGS) --workspace --no-fail-fast; rc=$$?; \
	BEAMFLOW_TEST_STORE=postgres cargo test $(CARGO_FLAGS) -p beamflow --no-fail-fast $(PG_SUITES) || rc=1; \
	bash scripts/slurm-cluster.sh stop >/dev/null 2>&1; bash scripts/postgres.sh stop >/dev/null 2>&1; exit $$rc

bench: build
	@$(ENV) && ./target/release/beamflow bench suite --size small -o target/bench
	@$(ENV) && ./target/release/beamflow bench engine --json
	@$(ENV) && ./target/release/beamflow bench hedm --frames 16 --json
	@$(ENV) && ./target/release/beamflow bench ptycho --json
	@$(ENV) && ./target/release/beamflow bench braggnn --json

# Fuzzes the readers of user input (flows, site configs, pilot frames, the
# kernels' HDF5 input): FUZZ_TARGET (default all) for FUZZ_SECONDS each.
# Not part of `make test`, which replays the committed corpus instead.
FUZZ_TARGET ?= all
FUZZ_SECONDS ?= 120
fuzz: setup
	@bash scripts/fuzz.sh $(FUZZ_TARGET) $(FUZZ_SECONDS)

clean:
	cargo clean
