#!/usr/bin/env bash
# Installs (once, cached) and starts or stops the real Kafka-protocol broker the tests use:
# tansu 0.6 with SQLite storage, as its own process on 127.0.0.1.
#
#   scripts/test-broker.sh install   build tansu into the tool cache if it is not there
#   scripts/test-broker.sh start     start a fresh broker; prints its address
#   scripts/test-broker.sh stop      stop it and remove its data
#
# The cache is $EVENTBUS_TOOLS (default ~/.cache/eventbus-tools): a fresh machine pays the
# ~11 minute build once, later runs reuse the binary.
set -euo pipefail

TOOLS="${EVENTBUS_TOOLS:-$HOME/.cache/eventbus-tools}"
TANSU="$TOOLS/bin/tansu"
STATE="${EVENTBUS_BROKER_STATE:-${TMPDIR:-/tmp}/eventbus-test-broker}"

install() {
  if [ -x "$TANSU" ]; then
    return 0
  fi
  echo "installing tansu 0.6.0 into $TOOLS (about 11 minutes, once per machine)" >&2
  cargo install tansu --version 0.6.0 --locked --features libsql,dynostore --root "$TOOLS" >&2
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() {
  install
  stop
  mkdir -p "$STATE/data"
  local port
  port="$(free_port)"
  local url="tcp://127.0.0.1:$port"
  # tansu resolves the SQLite path against its working directory: start it inside the folder.
  (cd "$STATE/data" && exec "$TANSU" broker --listener-url "$url" --advertised-listener-url "$url" \
      --storage-engine sqlite://tansu.db >"$STATE/tansu.log" 2>&1) &
  echo $! >"$STATE/pid"
  echo "127.0.0.1:$port" >"$STATE/address"
  for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then
      echo "127.0.0.1:$port"
      return 0
    fi
    sleep 0.1
  done
  echo "tansu did not start; its log:" >&2
  cat "$STATE/tansu.log" >&2
  exit 1
}

stop() {
  if [ -f "$STATE/pid" ]; then
    kill -9 "$(cat "$STATE/pid")" 2>/dev/null || true
    rm -f "$STATE/pid"
  fi
  rm -rf "$STATE/data" "$STATE/address"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  bin) install >/dev/null; echo "$TANSU" ;;
  *) echo "usage: $0 install|start|stop|bin" >&2; exit 2 ;;
esac
