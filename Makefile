# eventbus: `make test` is the whole suite, the same command CI runs.

CARGO ?= cargo
BROKER := scripts/test-broker.sh
S3 := scripts/test-s3.sh
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
EVENTBUS_BIN := $(TARGET_DIR)/debug/eventbus

.PHONY: test build-deps lint unit schemas-check ops-check real-broker dev-native-check demo bench clean-broker dev dev.down dev.native dev.native.down

## Everything: lint, unit and mock-cluster tests, the schema compatibility check, then
## the real-broker tests on tansu.
test: build-deps lint unit schemas-check ops-check real-broker dev-native-check

## What the build needs beyond a Rust toolchain, a C compiler and make: the full Perl
## (OpenSSL's configure script, compiled in for librdkafka's TLS, uses IPC::Cmd, which
## Debian's minimal perl-base lacks).
build-deps:
	scripts/debian-tools.sh perl=perl perl:IPC::Cmd=perl

## Formatting and clippy, warnings as errors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p eventbus-tests --features real-broker --all-targets -- -D warnings

## Unit tests, property tests, doc tests and the mock-cluster integration tests.
unit:
	$(CARGO) build -p eventbus-jobs --bin eventbus
	EVENTBUS_BIN=$(EVENTBUS_BIN) $(CARGO) test --workspace

## Every subject's working-tree schema against HEAD and its registered versions.
schemas-check:
	$(CARGO) build -p eventbus-jobs --bin eventbus
	$(EVENTBUS_BIN) schemas check --against HEAD --dir schemas

## deploy/ and docker-compose.yml: promtool on the alert rules, docker-compose config,
## and every eventbus command line of the compose file through `eventbus ... --check`.
ops-check:
	$(CARGO) build -p eventbus-jobs --bin eventbus
	scripts/ops-check.sh $(EVENTBUS_BIN)

## The dev stack (needs a Docker engine): Kafka, registry, MinIO, Kafka UI on 8080,
## Prometheus, Grafana and the jobs. See the README.
dev:
	docker-compose up -d --build

dev.down:
	docker-compose down

## The same jobs without Docker, against tansu and the S3 server on 127.0.0.1, with a
## generator; prints each job's metrics address. `make dev.native.down` stops them.
dev.native:
	$(CARGO) build -p eventbus-jobs --bin eventbus
	scripts/dev-native.sh start $(EVENTBUS_BIN)

dev.native.down:
	scripts/dev-native.sh stop

## Runs dev.native for about a minute: every job ready and answering /metrics.
dev-native-check:
	$(CARGO) build -p eventbus-jobs --bin eventbus
	@set -e; trap 'scripts/dev-native.sh stop >/dev/null 2>&1' EXIT; \
	scripts/dev-native.sh start $(EVENTBUS_BIN); \
	scripts/dev-native.sh check; sleep 45; scripts/dev-native.sh check

## Installs tansu and the S3 server if missing (cached), and Debian's stunnel4 and openssl
## for the TLS tests, starts tansu and S3, and runs each real-broker test binary on a
## fresh tansu of its own, then stops them. (tansu 0.6's
## group coordinator slows down as groups accumulate: after a few hundred joins,
## commits and kills it answers heartbeats later than a 6 s session allows.)
real-broker:
	$(CARGO) build -p eventbus-jobs --bin eventbus
	scripts/debian-tools.sh stunnel4=stunnel4 openssl=openssl
	@set -e; \
	s3=$$($(S3) start); \
	trap '$(BROKER) stop; $(S3) stop' EXIT; \
	export TANSU_BIN=$$($(BROKER) bin) EVENTBUS_BIN=$(EVENTBUS_BIN) \
	  EVENTBUS_TEST_S3=$$s3 EVENTBUS_TEST_S3_PID=$$($(S3) pid) EVENTBUS_TEST_PYTHON=$$($(S3) python); \
	for t in real_broker warehouse warehouse_dead_letters dlq_real_broker analytics alerting operations secure; do \
	  addr=$$($(BROKER) start); \
	  echo "$$t: a fresh tansu on $$addr, S3 server on $$s3"; \
	  EVENTBUS_TEST_BROKERS=$$addr \
	    $(CARGO) test -p eventbus-tests --features real-broker --test $$t -- --test-threads=1; \
	done

## The embedded demo.
demo:
	$(CARGO) run --release -- demo

## Executor against a bare rdkafka consumer, printed as a ratio.
bench:
	$(CARGO) run --release -- bench

clean-broker:
	$(BROKER) stop
