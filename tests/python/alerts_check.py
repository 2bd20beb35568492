# Checks the alerting job's output against alerts computed independently.
#
#   python alerts_check.py BROKERS STATES_TOPIC EMERGENCY_TOPIC ALERTS_TOPIC SCHEMA_DIR
#
# Reads the topics whole with confluent-kafka and decodes them with fastavro. The rules
# are the ones the test configures, written here in Python:
#   speeding:  speed_kph > 120 and DRIVING, for 10 s, cool-down 60 s;
#   low_battery: battery_pct < 15 and DRIVING, cool-down 120 s;
#   emergency: every event on the emergency topic;
#   silent:    absence (processing time), only checked for presence.
# An incident is a run of a vehicle's events (in partition offset order) for which the
# condition holds; it ends at a false event or once the partition's watermark (largest
# event time minus 5 s) is 300 s past its last true event. It fires at its first event
# at least `for` after its start and outside the cool-down (event time < alert + cool-down,
# which ends once the watermark passes it). alert_id is the name-based UUID (v5) of
# "rule\0topic\0partition\0offset" in the job's namespace.
#
# Prints a JSON summary; exits 1 when the deduplicated alerts differ from the expected.
import io
import json
import sys
import uuid

import fastavro
from confluent_kafka import Consumer, TopicPartition

brokers, states_topic, emergency_topic, alerts_topic, schema_dir = sys.argv[1:6]
NAMESPACE = uuid.UUID(int=0x5E0BA1E79F3C4D2A8B6E2F1DC0A47E31)
OOO, GAP = 5_000, 300_000


def schema(name):
    with open(f"{schema_dir}/{name}") as f:
        return fastavro.parse_schema(json.load(f))


def read_all(topic):
    c = Consumer({"bootstrap.servers": brokers, "group.id": "py-alerts-check",
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
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), writer)


def alert_id(rule, topic, partition, offset):
    return str(uuid.uuid5(NAMESPACE, f"{rule}\0{topic}\0{partition}\0{offset}"))


RULES = {
    "speeding": (lambda e: e["speed_kph"] > 120.0 and e["status"] == "DRIVING", 10_000, 60_000),
    "low_battery": (lambda e: e["battery_pct"] < 15.0 and e["status"] == "DRIVING", 0, 120_000),
}

state_schema = schema("VehicleState.avsc")
by_partition = {}
for m in read_all(states_topic):
    by_partition.setdefault(m.partition(), []).append((m.offset(), decode(m.value(), state_schema)))

expected = {}
last_of = {}
for p, events in by_partition.items():
    events.sort(key=lambda x: x[0])
    keys = {}  # (rule, vehicle) -> {"streak": [start, last, fired] | None, "until": ms | None}
    top = None
    for offset, e in events:
        t = e["event_time"]
        if not isinstance(t, int):
            t = int(t.timestamp() * 1000)
        top = t if top is None else max(top, t)
        wm = top - OOO
        for k, s in list(keys.items()):
            if s["until"] is not None and s["until"] < wm:
                s["until"] = None
            if s["streak"] is not None and s["streak"][1] + GAP < wm:
                s["streak"] = None
        last_of[e["vehicle_id"]] = (p, offset)
        for rule, (cond, for_ms, cooldown) in RULES.items():
            s = keys.setdefault((rule, e["vehicle_id"]), {"streak": None, "until": None})
            if not cond(e):
                s["streak"] = None
                continue
            if s["streak"] is None:
                s["streak"] = [t, t, False]
            st = s["streak"]
            st[1] = max(st[1], t)
            cooling = s["until"] is not None and t < s["until"]
            if not st[2] and t - st[0] >= for_ms and not cooling:
                st[2] = True
                s["until"] = t + cooldown if cooldown > 0 else None
                expected[alert_id(rule, states_topic, p, offset)] = (rule, e["vehicle_id"], p, offset)

for m in read_all(emergency_topic):
    expected[alert_id("emergency", emergency_topic, m.partition(), m.offset())] = (
        "emergency", m.key().decode(), m.partition(), m.offset())

alert_schema = schema("Alert.avsc")
got, copies, silent = {}, 0, []
pii_leaks, masked = 0, 0
for m in read_all(alerts_topic):
    a = decode(m.value(), alert_schema)
    # driver_id is the catalog's PII field of vehicle.state.v1: never in a message.
    pii_leaks += "driver-" in a["message"]
    masked += "driver ***" in a["message"]
    if m.key().decode() != a["vehicle_id"]:
        raise SystemExit(f"alert {a['alert_id']} keyed {m.key()!r}, not by its vehicle")
    if a["rule"] == "silent":
        silent.append(a)
        continue
    a["alert_id"] = str(a["alert_id"])
    if a["alert_id"] in got:
        copies += 1
    got[a["alert_id"]] = (a["rule"], a["vehicle_id"], a["source_partition"], a["source_offset"])

missing = sorted(v for k, v in expected.items() if k not in got)
extra = sorted(v for k, v in got.items() if k not in expected)
summary = {
    "expected": len(expected),
    "got": len(got),
    "copies": copies,
    "pii_leaks": pii_leaks,
    "masked": masked,
    "by_rule": {r: sum(1 for v in expected.values() if v[0] == r) for r in ["speeding", "low_battery", "emergency"]},
    "missing": missing[:10],
    "extra": extra[:10],
    "silent_alerts": sorted({(a["vehicle_id"], a["source_partition"], a["source_offset"]) for a in silent}),
    "last_of": {v: list(po) for v, po in last_of.items()},
}
print(json.dumps(summary))
sys.exit(1 if missing or extra else 0)
