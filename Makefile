# wxmp: two commands set everything up on a fresh machine: `make run` and `make test`.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: run test scale-test demo bench bench-data lint fmt check-deploy fuzz build release clean

## run: the whole stack in one process (SQLite + in-memory sessions + the WeChat sandbox)
run:
	$(CARGO) run -p wxmp -- up

## test: every test (needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379; see README),
## after dropping the databases earlier runs left behind
test:
	@bash tests/drop-stale-databases.sh
	$(CARGO) test --workspace --no-fail-fast

## scale-test: 3 gateways behind HAProxy and 2 replicas of each service as real processes:
## rolling restart and SIGKILL under load, two reconcilers, concurrent migrations (needs haproxy)
scale-test:
	$(CARGO) build -p gateway -p auth-service -p user-service -p pay-service -p sandbox --bins
	$(CARGO) test -p wxmp-tests --test scale -- --nocapture

## demo: plays a mini program against a running `make run`
demo:
	$(CARGO) run -p wxmp -- demo

## bench: load every path of a release build (PostgreSQL + Redis) and write bench/results.md
bench:
	bash bench/run.sh

## bench-data: pay-service's periodic queries timed at 1k, 100k and 1M orders (PostgreSQL only;
## BENCH_DATA_SIZES to choose), with and without issue 29's indexes, into bench/results.md
bench-data:
	bash bench/data.sh

## lint: what CI checks besides the tests
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## check-deploy: render and validate the Kubernetes overlays, the compose file and the Dockerfile
check-deploy:
	bash deploy/check.sh

## fuzz: build every fuzz target and run each for FUZZ_SECONDS (20) over fuzz/seeds, as CI does
## (its own workspace and target dir, fuzz/target; see fuzz/README.md)
fuzz:
	bash fuzz/ci.sh

fmt:
	$(CARGO) fmt --all

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --workspace --release

clean:
	$(CARGO) clean
