# Checks the analytics job's output against a GROUP BY computed independently.
#
#   python fleet_minute_check.py BROKERS INPUT_TOPIC OUTPUT_TOPIC SCHEMA_DIR
#
# Reads both topics whole with confluent-kafka, decodes the wire format with fastavro
# (the .avsc files beside the catalog), computes per (fleet_id, UTC minute of
# event_time) the expected row with DuckDB over the input, deduplicates the output by
# (fleet_id, minute) keeping the last, and compares every fleet-minute: integers
# exactly, doubles within 1e-9 relative. Prints a JSON summary; exits 1 on a mismatch.
import io
import json
import struct
import sys

import duckdb
import fastavro
from confluent_kafka import Consumer, TopicPartition

brokers, input_topic, output_topic, schema_dir = sys.argv[1:5]


def schema(name):
    with open(f"{schema_dir}/{name}") as f:
        return fastavro.parse_schema(json.load(f))


def read_all(topic):
    c = Consumer({"bootstrap.servers": brokers, "group.id": "py-fleet-minute-check",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    md = c.list_topics(topic, timeout=30).topics[topic]
    ends = {}
    for p in md.partitions:
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        if high > low:
            ends[p] = (low, high)
    c.assign([TopicPartition(topic, p, low) for p, (low, _) in ends.items()])
    out, left = [], {p: high for p, (_, high) in ends.items()}
    while left:
        m = c.poll(10)
        if m is None:
            raise SystemExit(f"timed out reading {topic}: {left} left")
        if m.error():
            raise SystemExit(f"reading {topic}: {m.error()}")
        out.append(m)
        if m.offset() + 1 >= left.get(m.partition(), 0):
            left.pop(m.partition(), None)
    c.close()
    return out


def decode(value, writer):
    if value is None or len(value) < 5 or value[0] != 0:
        raise SystemExit("a record is not in the wire format")
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), writer)


state = schema("VehicleState.avsc")
minute_schema = schema("FleetMinute.avsc")

rows = []
for m in read_all(input_topic):
    v = decode(m.value(), state)
    t = v["event_time"]
    ms = int(t.timestamp() * 1000) if hasattr(t, "timestamp") else int(t)
    rows.append((v["fleet_id"], ms, v["vehicle_id"], float(v["speed_kph"]),
                 float(v["battery_pct"]), v["status"]))

db = duckdb.connect()
db.execute("""CREATE TABLE s (fleet_id VARCHAR, event_ms BIGINT, vehicle_id VARCHAR,
              speed DOUBLE, battery DOUBLE, status VARCHAR)""")
db.executemany("INSERT INTO s VALUES (?, ?, ?, ?, ?, ?)", rows)
expected = {}
for fleet, minute, vehicles, events, avg_speed, min_battery in db.execute("""
        SELECT fleet_id, event_ms // 60000 * 60000 AS minute,
               COUNT(DISTINCT vehicle_id), COUNT(*),
               COALESCE(AVG(speed) FILTER (WHERE status = 'DRIVING'), 0.0),
               MIN(battery)
        FROM s GROUP BY ALL""").fetchall():
    expected[(fleet, minute)] = {"vehicles_active": vehicles, "events": events,
                                 "avg_speed_kph": avg_speed, "min_battery_pct": min_battery,
                                 "status_counts": {}}
for fleet, minute, status, n in db.execute("""
        SELECT fleet_id, event_ms // 60000 * 60000, status, COUNT(*)
        FROM s GROUP BY ALL""").fetchall():
    expected[(fleet, minute)]["status_counts"][status] = n

got, records = {}, 0
for m in read_all(output_topic):
    v = decode(m.value(), minute_schema)
    records += 1
    t = v["minute"]
    minute = int(t.timestamp() * 1000) if hasattr(t, "timestamp") else int(t)
    if m.key() is None or m.key().decode() != v["fleet_id"]:
        raise SystemExit(f"a result is not keyed by its fleet_id: {m.key()!r}")
    got[(v["fleet_id"], minute)] = v  # the last one wins


def close(a, b):
    return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))


bad = []
for key in sorted(set(expected) | set(got)):
    e, g = expected.get(key), got.get(key)
    if e is None or g is None:
        bad.append({"fleet_minute": key, "expected": e is not None, "emitted": g is not None})
        continue
    same = (e["vehicles_active"] == g["vehicles_active"] and e["events"] == g["events"]
            and close(e["avg_speed_kph"], g["avg_speed_kph"])
            and close(e["min_battery_pct"], g["min_battery_pct"])
            and e["status_counts"] == dict(g["status_counts"]))
    if not same:
        bad.append({"fleet_minute": key, "expected": e,
                    "emitted": {k: g[k] for k in e}})
summary = json.dumps({"input": len(rows), "fleet_minutes": len(expected),
                      "output_records": records, "mismatches": len(bad), "first": bad[:3]},
                     default=str)
print(summary)
if bad:
    print(summary, file=sys.stderr)
    sys.exit(1)
