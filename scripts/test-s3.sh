#!/usr/bin/env bash
# Installs (once, cached) and starts or stops the S3-compatible server the tests use:
# moto's server from PyPI, in a virtualenv in the tool cache, as its own process on
# 127.0.0.1. The same virtualenv holds pyarrow and duckdb, the independent Parquet
# readers the tests cross-check the tables with, and confluent-kafka with fastavro, the
# independent Kafka client that reads the dead letters' headers back and produces Avro
# records the warehouse must load.
#
#   scripts/test-s3.sh install   create the virtualenv if it is not there
#   scripts/test-s3.sh start     start a fresh server with bucket eventbus-test; prints its URL
#   scripts/test-s3.sh stop      stop it
#   scripts/test-s3.sh pid       the server's process id (tests pause it to simulate an outage)
#   scripts/test-s3.sh python    the virtualenv's python
set -euo pipefail

TOOLS="${EVENTBUS_TOOLS:-$HOME/.cache/eventbus-tools}"
VENV="$TOOLS/venv"
STATE="${EVENTBUS_S3_STATE:-${TMPDIR:-/tmp}/eventbus-test-s3}"
BUCKET=eventbus-test

install() {
  if [ -x "$VENV/bin/moto_server" ] && "$VENV/bin/python" -c 'import pyarrow, duckdb, confluent_kafka, fastavro, prometheus_client' 2>/dev/null; then
    return 0
  fi
  echo "installing moto, pyarrow, duckdb, confluent-kafka, fastavro and prometheus_client into $VENV (once per machine)" >&2
  python3 -m venv "$VENV" >&2
  # Pinned: a fresh machine gets the versions the suite is known to pass with.
  "$VENV/bin/pip" install --quiet 'moto[server]==5.2.5' 'pyarrow==26.0.1' 'duckdb==2.0.1' \
    'confluent-kafka==2.16.1' 'fastavro==1.13.1' 'prometheus-client==0.23.1' >&2
}

start() {
  install
  stop
  mkdir -p "$STATE"
  local port
  port="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$STATE/moto.log" 2>&1 &
  echo $! >"$STATE/pid"
  local url="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    if AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test "$VENV/bin/python" - "$url" "$BUCKET" 2>/dev/null <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
s3.create_bucket(Bucket=sys.argv[2])
PY
    then
      echo "$url"
      return 0
    fi
    sleep 0.2
  done
  echo "the S3 server did not start; its log:" >&2
  cat "$STATE/moto.log" >&2
  exit 1
}

stop() {
  if [ -f "$STATE/pid" ]; then
    kill -CONT "$(cat "$STATE/pid")" 2>/dev/null || true
    kill -9 "$(cat "$STATE/pid")" 2>/dev/null || true
    rm -f "$STATE/pid"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  pid) cat "$STATE/pid" ;;
  python) echo "$VENV/bin/python" ;;
  *) echo "usage: $0 install|start|stop|pid|python" >&2; exit 2 ;;
esac
