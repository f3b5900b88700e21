# lambdalet: `make run` starts the supervisor and deploys examples/;
# `make test` runs every test (root tests included: run it as root).
CARGO ?= cargo
STATE_DIR ?= $(CURDIR)/.state
SOCKET ?= $(STATE_DIR)/lambdalet.sock
# The Lambda HTTP API (docs/http.md) of `make run`; empty turns it off.
HTTP ?= 127.0.0.1:3001
BIN := target/release/lambdalet

.PHONY: build run test test-cgroup2 lint bench bench-load clean

build:
	$(CARGO) build --release

run: build
	STATE_DIR=$(STATE_DIR) SOCKET=$(SOCKET) HTTP=$(HTTP) BIN=$(BIN) scripts/run.sh

test:
	$(CARGO) build --all-targets
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --no-fail-fast; \
	else \
		$(CARGO) test --no-fail-fast; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# The benchmarks (root; docs/benchmarks.md): cold start, warm invokes, a
# burst of 200 cold starts, the memory of 1000 idle environments, durable
# Event accepts and the drain of a queue (under a minute), the cold
# start of custom runtimes (provided; it builds examples/rust-hello once,
# ~2.5 minutes cold), and invokes over HTTP beside the socket (about a
# minute); a few minutes each. `bench-load` is the 60 s mixed load
# (10 functions × 50 clients), apart because it keeps both CPUs busy for
# over a minute.
bench: build
	$(CARGO) bench --bench coldstart --bench warm --bench burst --bench density --bench events --bench nodestart --bench provided --bench http

bench-load: build
	$(CARGO) bench --bench load

clean:
	$(CARGO) clean

# A VM on a pure cgroup v2 kernel (qemu, software emulation) running the
# supervisor, the sandbox and Python functions: docs/cgroup2-vm.md. Root only;
# installs qemu-system-x86, busybox-static and cpio with apt-get if missing.
test-cgroup2: build
	LAMBDALET_BIN="$${CARGO_TARGET_DIR:-target}/release/lambdalet" vmtest/run.sh
