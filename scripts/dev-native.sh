#!/usr/bin/env bash
# The dev stack without Docker: tansu and the S3 server on 127.0.0.1, the catalog's
# topics, a generator, and the warehouse, dlq-processor, analytics and alerting jobs,
# each serving /metrics, /healthz and /readyz on a port of its own.
#
#   scripts/dev-native.sh start EVENTBUS_BIN   starts everything, prints the addresses
#   scripts/dev-native.sh check                every job answers /metrics, and /readyz 200
#   scripts/dev-native.sh stop                 stops everything
#
# State (logs, pids, addresses) lives in $EVENTBUS_DEV_STATE (default /tmp/eventbus-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="${EVENTBUS_DEV_STATE:-${TMPDIR:-/tmp}/eventbus-dev}"
export EVENTBUS_BROKER_STATE="$STATE/broker" EVENTBUS_S3_STATE="$STATE/s3"
JOBS=(warehouse dlq-processor analytics alerting)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() {
  local bin="${1:?usage: $0 start EVENTBUS_BIN}"
  stop >/dev/null 2>&1 || true
  mkdir -p "$STATE"
  local brokers s3
  brokers="$(TANSU_BIN="$(scripts/test-broker.sh bin)" scripts/test-broker.sh start)"
  s3="$(scripts/test-s3.sh start)"
  echo "$brokers" >"$STATE/brokers"
  "$bin" topics apply --brokers "$brokers" --replication-factor 1 >"$STATE/topics.log" 2>&1
  export AWS_ENDPOINT_URL="$s3" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
  "$bin" generate --brokers "$brokers" --topic vehicle.state.v1 --count 100000000 --rate 50 \
    >"$STATE/generator.log" 2>&1 &
  echo $! >"$STATE/generator.pid"
  "$bin" generate --brokers "$brokers" --topic safety.emergency.v1 --count 100000000 --rate 1 \
    >"$STATE/generator-emergencies.log" 2>&1 &
  echo $! >"$STATE/generator-emergencies.pid"
  : >"$STATE/addresses"
  for job in "${JOBS[@]}"; do
    local cfg="deploy/jobs/$job.toml" port
    [ -f "deploy/native/$job.toml" ] && cfg="deploy/native/$job.toml"
    port="$(free_port)"
    "$bin" run "$job" --config "$cfg" --brokers "$brokers" --metrics-addr "127.0.0.1:$port" \
      >"$STATE/$job.log" 2>&1 &
    echo $! >"$STATE/$job.pid"
    echo "$job 127.0.0.1:$port" >>"$STATE/addresses"
  done
  echo "brokers $brokers (tansu), S3 $s3; logs in $STATE"
  while read -r job addr; do
    echo "$job: http://$addr/metrics  http://$addr/readyz"
  done <"$STATE/addresses"
}

check() {
  local deadline=$((SECONDS + ${EVENTBUS_DEV_READY_S:-120}))
  while read -r job addr; do
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/readyz")" = 200 ]; do
      if ! kill -0 "$(cat "$STATE/$job.pid")" 2>/dev/null; then
        echo "$job stopped:" >&2
        tail -5 "$STATE/$job.log" >&2
        return 1
      fi
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "$job is not ready at http://$addr/readyz:" >&2
        curl -s "http://$addr/readyz" >&2 || true
        tail -5 "$STATE/$job.log" >&2
        return 1
      fi
      sleep 1
    done
    local metrics
    metrics="$(curl -sf "http://$addr/metrics")"
    local series
    series="$(grep -c '^eventbus_' <<<"$metrics" || true)"
    if [ "$series" -eq 0 ]; then
      echo "$job: /metrics has no eventbus_ series" >&2
      return 1
    fi
    echo "$job: ready, /metrics has $series eventbus_ series"
  done <"$STATE/addresses"
}

stop() {
  # The jobs drain and commit on TERM, so the broker stays up until they have exited
  # (up to 30 s); one that has not by then is killed, so nothing outlives the stack.
  local pids=()
  for pidfile in "$STATE"/*.pid; do
    [ -f "$pidfile" ] || continue
    pids+=("$(cat "$pidfile")")
    kill "${pids[-1]}" 2>/dev/null || true
    rm -f "$pidfile"
  done
  local deadline=$((SECONDS + 30))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "pid $pid did not exit 30 s after TERM; killing it" >&2
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  scripts/test-broker.sh stop || true
  scripts/test-s3.sh stop || true
}

case "${1:-}" in
  start) shift; start "$@" ;;
  check) check ;;
  stop) stop ;;
  *) echo "usage: $0 start EVENTBUS_BIN|check|stop" >&2; exit 2 ;;
esac
