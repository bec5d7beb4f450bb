# The two commands of the quick start: `make demo` and `make test`.
# Both start ephemeral Postgres and Redis unless DATABASE_URL / REDIS_URL are set.

CARGO ?= cargo
ARGS ?=

.PHONY: demo test lint bench bench-retention bench-monitor chaos build servers

servers:
	@scripts/ensure-servers.sh

build:
	$(CARGO) build --bins --examples

## Run the main job end to end: servers, workers, a mixed batch, a summary.
demo: servers build
	target/debug/demo $(ARGS)

## Run the whole test suite (unit, integration against real servers, a
## headless-Chromium test of the monitor, doc tests).
test: build
	@scripts/ensure-servers.sh --browser
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Producer latency and end-to-end throughput, on a durable (fsync on) Postgres,
## side by side with BullMQ on the same Redis and graphile-worker on the same
## Postgres when Node and npm are available.
bench: servers
	$(CARGO) build --release --bins
	@(cd bench/bullmq && npm install --no-audit --no-fund --silent >/dev/null 2>&1) || echo "npm install of the BullMQ baseline failed; it will be skipped"
	@(cd bench/graphile && npm install --no-audit --no-fund --silent >/dev/null 2>&1) || echo "npm install of the graphile-worker baseline failed; it will be skipped"
	target/release/bench $(ARGS)

## Monitor list/detail latency with 1M runs for one tenant among 10 tenants.
bench-monitor: servers
	$(CARGO) build --release --bins
	target/release/bench-monitor $(ARGS)

## Mixed load while killing workers, the reaper and Redis; prints the audit (lost must be 0).
chaos: servers
	$(CARGO) build --release --bins
	target/release/chaos $(ARGS)

## Retention at scale: 1M completed runs over 120 days, delete rate and worker write latency.
bench-retention: servers
	$(CARGO) build --release --bins
	target/release/bench-retention $(ARGS)
