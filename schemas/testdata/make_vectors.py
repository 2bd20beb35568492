"""Writes wire-format test vectors with fastavro, an Avro implementation independent of
the Rust one, so the decoder is checked against bytes it did not produce itself.

Run from this folder:  python3 make_vectors.py   (needs: pip install fastavro)
It writes vehicle_state_v1.bin (framed with schema id 1, as in ../registry.toml) and
vehicle_state_v1.json (the values, for the test to compare against).
"""
import io
import json
import struct
import uuid

import fastavro

with open("../VehicleState.avsc") as f:
    schema = fastavro.parse_schema(json.load(f))

record = {
    "event_id": uuid.UUID("6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"),
    "vehicle_id": "veh-0042",
    "fleet_id": "fleet-03",
    "event_time": 1767225600123,
    "position": {"lat": 52.520008, "lon": 13.404954, "heading_deg": 271.5},
    "speed_kph": 48.25,
    "battery_pct": 63.5,
    "status": "CHARGING",
    "odometer_km": 120345.75,
    "driver_id": None,
    "firmware_version": "4.2.1",
}

body = io.BytesIO()
fastavro.schemaless_writer(body, schema, record)
with open("vehicle_state_v1.bin", "wb") as f:
    f.write(b"\x00" + struct.pack(">I", 1) + body.getvalue())

expected = dict(record, event_id=str(record["event_id"]))
with open("vehicle_state_v1.json", "w") as f:
    json.dump(expected, f, indent=2, sort_keys=True)
    f.write("\n")
