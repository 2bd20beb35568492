#!/usr/bin/env bash
# The warehouse at full size under faults (outside `make test`: it runs for many minutes).
#
#   scripts/soak.sh [RECORDS]      default 1,000,000
#
# Produces RECORDS VehicleState records into vehicle.state.v1 (50 partitions) on a tansu
# of its own, spread over the first minutes, and meanwhile runs the warehouse job into a
# table on moto's S3 server while it
#   - SIGKILLs the job 20 times (SOAK_KILLS), at random moments 3-12 s into each run;
#   - restarts tansu 3 times on its own data (after kills 5, 10 and 15);
#   - stops the S3 server for 30 s once (SIGSTOP/SIGCONT, after kill 8), while a job runs;
# then runs the job to the end (`--until-caught-up`), and reads the table back with
# pyarrow (a reader no one here wrote). It prints rows, distinct offsets, lost and
# duplicated, and exits non-zero unless lost = duplicated = 0.
#
# Tools come from the same cache as the tests (scripts/test-broker.sh, scripts/test-s3.sh).
# Work files and logs: $SOAK_DIR (default a new folder under /tmp), kept afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS="${1:-1000000}"
KILLS="${SOAK_KILLS:-20}"
OUTAGE_S="${SOAK_S3_OUTAGE_S:-30}"
WORK="${SOAK_DIR:-$(mktemp -d /tmp/eventbus-soak.XXXXXX)}"
mkdir -p "$WORK"
export EVENTBUS_S3_STATE="$WORK/s3"
log() { printf '%s soak: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

log "work folder $WORK"
cargo build --release -p eventbus-jobs --bin eventbus >&2
BIN="$PWD/target/release/eventbus"
TANSU="$(scripts/test-broker.sh bin)"
PY="$(scripts/test-s3.sh python)"

# tansu, restartable on its own data and port.
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
BROKERS="127.0.0.1:$PORT"
mkdir -p "$WORK/tansu"
start_tansu() {
  (cd "$WORK/tansu" && exec "$TANSU" broker --listener-url "tcp://$BROKERS" \
    --advertised-listener-url "tcp://$BROKERS" --storage-engine sqlite://tansu.db \
    >>"$WORK/tansu.log" 2>&1) &
  echo $! >"$WORK/tansu.pid"
  disown
  for _ in $(seq 1 100); do
    if "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$PORT),0.2)" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  log "tansu did not start; see $WORK/tansu.log"
  exit 1
}
stop_tansu() { kill -9 "$(cat "$WORK/tansu.pid")" 2>/dev/null || true; sleep 0.5; }
S3="$(scripts/test-s3.sh start)"
S3_PID="$(scripts/test-s3.sh pid)"
JOB_PID=""
cleanup() {
  [ -n "$JOB_PID" ] && kill -9 "$JOB_PID" 2>/dev/null || true
  [ -n "${GEN_PID:-}" ] && kill -9 "$GEN_PID" 2>/dev/null || true
  kill -CONT "$S3_PID" 2>/dev/null || true
  stop_tansu
  scripts/test-s3.sh stop || true
}
trap cleanup EXIT
start_tansu
log "tansu on $BROKERS, S3 on $S3"

"$BIN" topics apply --brokers "$BROKERS" --replication-factor 1 >"$WORK/topics.log" 2>&1
# The records arrive while the faults happen: produced at a rate that spreads them over
# the first SOAK_LOAD_S seconds (default 150) of the run.
LOAD_S="${SOAK_LOAD_S:-150}"
log "producing $RECORDS records over about $LOAD_S s, while the faults happen"
"$BIN" generate --brokers "$BROKERS" --topic vehicle.state.v1 --count "$RECORDS" \
  --rate "$(( RECORDS / LOAD_S ))" >"$WORK/generate.log" 2>&1 &
GEN_PID=$!

PREFIX="soak-$(date +%s)"
cat >"$WORK/job.toml" <<EOF
[kafka]
"bootstrap.servers" = "$BROKERS"
"session.timeout.ms" = "6000"
"max.poll.interval.ms" = "20000"
[source]
group_id = "soak-$PREFIX"
topics = ["vehicle.state.v1"]
commit_interval_ms = 500
[warehouse]
table_root = "s3://eventbus-test/$PREFIX"
roll_rows = 50000
max_age_ms = 2000
[warehouse.s3]
endpoint = "$S3"
region = "us-east-1"
access_key_id = "test"
secret_access_key = "test"
EOF

start_job() { # name, extra args...
  local name="$1"; shift
  "$BIN" run warehouse --config "$WORK/job.toml" "$@" >"$WORK/job-$name.log" 2>&1 &
  JOB_PID=$!
}

for n in $(seq 1 "$KILLS"); do
  start_job "run$n"
  if [ "$n" -eq 8 ]; then
    sleep 3
    log "kill $n: the S3 server stops answering for ${OUTAGE_S} s"
    kill -STOP "$S3_PID"
    sleep "$OUTAGE_S"
    kill -CONT "$S3_PID"
  fi
  sleep "$(( (RANDOM % 10) + 3 ))"
  kill -9 "$JOB_PID" 2>/dev/null || true
  wait "$JOB_PID" 2>/dev/null || true
  JOB_PID=""
  log "kill $n of $KILLS"
  if [ "$n" -eq 5 ] || [ "$n" -eq 10 ] || [ "$n" -eq 15 ]; then
    log "restarting tansu on its own data"
    stop_tansu
    start_tansu
  fi
done

if ! wait "$GEN_PID"; then
  log "the producer failed; see $WORK/generate.log"
  exit 1
fi
log "all $RECORDS records produced; running the job to the end"
finished=""
for try in 1 2 3; do
  sleep 7 # tansu's group coordinator lets go of the killed members
  extra=()
  [ "$try" -gt 1 ] && extra=(--group "soak-final-$PREFIX-$try")
  start_job "final$try" --until-caught-up "${extra[@]}"
  if wait "$JOB_PID"; then
    finished=yes
    JOB_PID=""
    break
  fi
  JOB_PID=""
  log "final run $try failed; see $WORK/job-final$try.log"
done
[ -n "$finished" ] || { log "the job never finished"; exit 1; }
log "the final run: $(sed 's/\x1b\[[0-9;]*m//g' "$WORK"/job-final*.log | grep -o 'consumed=[0-9]*' | tail -1)"

log "reading the table back with pyarrow"
"$PY" - "$BROKERS" "$S3" "eventbus-test/$PREFIX/vehicle.state.v1" <<'PY'
import sys
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyarrow import fs
from confluent_kafka import Consumer, TopicPartition

brokers, endpoint, path = sys.argv[1:4]
c = Consumer({"bootstrap.servers": brokers, "group.id": "soak-check"})
meta = c.list_topics("vehicle.state.v1", timeout=30)
expected = {}
for p in meta.topics["vehicle.state.v1"].partitions:
    low, high = c.get_watermark_offsets(TopicPartition("vehicle.state.v1", p), timeout=30)
    expected[p] = (low, high)
c.close()
s3 = fs.S3FileSystem(endpoint_override=endpoint, access_key="test", secret_key="test",
                     region="us-east-1", scheme="http")
table = ds.dataset(path, filesystem=s3, format="parquet", partitioning="hive",
                   exclude_invalid_files=False).to_table(columns=["_partition", "_offset"])
rows = table.num_rows
parts = table.column("_partition").to_pylist()
offs = table.column("_offset").to_pylist()
seen = set(zip(parts, offs))
want = sum(h - l for l, h in expected.values())
lost = sum(1 for p, (l, h) in expected.items() for o in range(l, h) if (p, o) not in seen)
dups = rows - len(seen)
print(f"records {want}  rows {rows}  distinct {len(seen)}  lost {lost}  duplicated {dups}")
sys.exit(0 if lost == 0 and dups == 0 and want > 0 else 1)
PY
