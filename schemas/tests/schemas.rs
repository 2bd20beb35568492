//! Round trips, evolution, an independent implementation's bytes, and bad input.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::schema::{RecordField, UnionSchema};
use apache_avro::types::Value;
use eventbus_runtime::{Classify, ErrorClass, Origin};
use eventbus_schemas::events::{VehicleState, VehicleStatus};
use eventbus_schemas::{Catalog, DecodeError, Decoder, FileRegistry, bundled_dir, encode_value};
use proptest::prelude::*;

fn registry() -> FileRegistry {
    FileRegistry::open(&bundled_dir()).expect("the committed registry is valid")
}

type Names = std::collections::HashMap<String, Schema>;

/// A value of any schema, with every optional part filled in where it can be. `names`
/// collects named types as they are met, to follow references to them.
fn sample(schema: &Schema, depth: u32, names: &mut Names) -> Value {
    if let (Schema::Record(_) | Schema::Enum(_) | Schema::Fixed(_), Some(name)) =
        (schema, schema.name())
    {
        names.insert(name.fullname(None), schema.clone());
    }
    match schema {
        Schema::Null => Value::Null,
        Schema::Boolean => Value::Boolean(true),
        Schema::Int => Value::Int(7),
        Schema::Long => Value::Long(1_234_567_890_123),
        Schema::Float => Value::Float(1.5),
        Schema::Double => Value::Double(2.25),
        Schema::Bytes => Value::Bytes(vec![1, 2, 3]),
        Schema::String => Value::String(format!("text-{depth}")),
        Schema::Uuid => Value::Uuid(apache_avro::Uuid::from_u128(
            0x1234_5678_9abc_def0_1234_5678_9abc_def0,
        )),
        Schema::TimestampMillis => Value::TimestampMillis(1_767_225_600_123),
        // apache-avro wants bytes-backed decimals wide enough for their whole precision.
        Schema::Decimal(_) => Value::Decimal(apache_avro::Decimal::from(vec![0, 0, 0, 0x30, 0x39])),
        Schema::Array(a) => Value::Array(vec![
            sample(&a.items, depth + 1, names),
            sample(&a.items, depth + 2, names),
        ]),
        Schema::Map(m) => Value::Map(
            [("k".to_owned(), sample(&m.types, depth + 1, names))]
                .into_iter()
                .collect(),
        ),
        Schema::Enum(e) => Value::Enum(
            e.symbols.len() as u32 - 1,
            e.symbols.last().cloned().unwrap(),
        ),
        Schema::Union(u) => union_sample(u, depth, names),
        Schema::Record(r) => Value::Record(
            r.fields
                .iter()
                .map(|f: &RecordField| (f.name.clone(), sample(&f.schema, depth + 1, names)))
                .collect(),
        ),
        Schema::Ref { name } => {
            let target = names
                .get(&name.fullname(None))
                .cloned()
                .expect("a reference to a type defined earlier");
            sample(&target, depth + 1, names)
        }
        other => panic!("no sample for {other:?}"),
    }
}

fn union_sample(u: &UnionSchema, depth: u32, names: &mut Names) -> Value {
    let (i, branch) = u
        .variants()
        .iter()
        .enumerate()
        .find(|(_, s)| !matches!(s, Schema::Null))
        .expect("a non-null branch");
    Value::Union(i as u32, Box::new(sample(branch, depth, names)))
}

#[test]
fn every_registered_schema_round_trips_through_the_wire_format() {
    let reg = Arc::new(registry());
    let decoder = Decoder::new(reg.clone());
    let mut count = 0;
    for entry in reg.entries() {
        let value = sample(&entry.schema, 0, &mut Names::new());
        let bytes = encode_value(entry.id, &entry.schema, value.clone()).expect("encode");
        let (id, back) = decoder.decode(&bytes, None).expect("decode");
        assert_eq!(id, entry.id);
        assert_eq!(back, value, "{}", entry.file.display());
        count += 1;
    }
    assert_eq!(count, 9, "one entry per subject");
}

/// Decodes `bytes` into `T`, encodes `T` again and checks the bytes are identical: the
/// struct holds every field of the schema, with the schema's types, in its order.
fn typed_round_trip<T>(reg: &Arc<FileRegistry>, id: u32, schema: &Schema, bytes: &[u8]) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let decoder = Decoder::new(reg.clone());
    let event: T = decoder.decode_typed(bytes, None).expect("decodes typed");
    let again = eventbus_schemas::encode(id, schema, &event).expect("encodes typed");
    assert_eq!(again, bytes, "{}", std::any::type_name::<T>());
    event
}

#[test]
fn every_event_type_round_trips_through_its_rust_struct() {
    use eventbus_schemas::events::*;
    let reg = Arc::new(registry());
    let mut seen = Vec::new();
    for entry in reg.entries() {
        let value = sample(&entry.schema, 0, &mut Names::new());
        let bytes = encode_value(entry.id, &entry.schema, value).expect("encode");
        let (id, schema) = (entry.id, &entry.schema);
        let name = entry.schema.name().expect("named").name.clone();
        match name.as_str() {
            "VehicleState" => drop(typed_round_trip::<VehicleState>(&reg, id, schema, &bytes)),
            "VehicleCommand" => {
                let c = typed_round_trip::<VehicleCommand>(&reg, id, schema, &bytes);
                assert!(c.expires_at.is_some(), "the sample fills optional parts");
            }
            "FleetOperation" => {
                let op = typed_round_trip::<FleetOperation>(&reg, id, schema, &bytes);
                assert!(op.trip.is_some() && op.dispatch.is_some() && op.capacity.is_some());
            }
            "EmergencyEvent" => drop(typed_round_trip::<EmergencyEvent>(&reg, id, schema, &bytes)),
            "TelemetryBatch" => {
                let b = typed_round_trip::<TelemetryBatch>(&reg, id, schema, &bytes);
                assert!(!b.readings.is_empty());
            }
            "Alert" => drop(typed_round_trip::<Alert>(&reg, id, schema, &bytes)),
            "FleetMinute" => drop(typed_round_trip::<FleetMinute>(&reg, id, schema, &bytes)),
            "FleetMinutePartial" => drop(typed_round_trip::<FleetMinutePartial>(
                &reg, id, schema, &bytes,
            )),
            other => panic!("no Rust struct for {other}"),
        }
        seen.push(name);
    }
    assert_eq!(seen.len(), 9);
}

#[test]
fn typed_events_encode_to_what_the_generic_path_reads() {
    use eventbus_schemas::events::*;
    let reg = Arc::new(registry());
    let (id, schema) = reg
        .latest_of("fleet.operations.v1-value")
        .expect("registered");
    let op = FleetOperation {
        operation_id: "5b1e4c1a-8a43-4a53-9d0e-6f0f7d2c9a11".into(),
        fleet_id: "fleet-7".into(),
        event_time: 1_790_000_000_000,
        operation_type: OperationType::TripCompleted,
        trip: Some(Trip {
            trip_id: "trip-1".into(),
            vehicle_id: Some("veh-0001".into()),
            origin: GeoPoint {
                lat: 52.5,
                lon: 13.4,
            },
            destination: GeoPoint {
                lat: 52.52,
                lon: 13.41,
            },
            passenger_count: 2,
            fare: Some(fare_from_cents(-1_234_567)),
        }),
        dispatch: None,
        capacity: None,
        cancel_reason: None,
    };
    let bytes = eventbus_schemas::encode(id, &schema, &op).expect("encode");
    let decoder = Decoder::new(reg.clone());
    let back: FleetOperation = decoder.decode_typed(&bytes, None).expect("decode");
    assert_eq!(back, op);
    assert_eq!(
        back.trip.as_ref().and_then(Trip::fare_cents),
        Some(-1_234_567)
    );
    let (_, value) = decoder.decode(&bytes, None).expect("generic");
    assert_eq!(
        field(&value, "operation_type"),
        &Value::Enum(2, "TRIP_COMPLETED".into())
    );

    let (id, schema) = reg
        .latest_of("vehicle.commands.v1-value")
        .expect("registered");
    let cmd = VehicleCommand {
        command_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
        vehicle_id: "veh-0002".into(),
        issued_at: 1_790_000_000_000,
        command_type: CommandType::Reroute,
        parameters: [("route".to_owned(), "r-9".to_owned())].into(),
        issued_by: "dispatcher".into(),
        expires_at: None,
    };
    let bytes = eventbus_schemas::encode(id, &schema, &cmd).expect("encode");
    let back: VehicleCommand = decoder.decode_typed(&bytes, None).expect("decode");
    assert_eq!(back, cmd);
}

#[test]
fn the_embedded_registry_equals_the_files() {
    let files = registry();
    let embedded = FileRegistry::embedded().expect("embedded registry");
    let mut n = 0;
    for e in files.entries() {
        assert_eq!(embedded.get(e.id), Some(e.schema.clone()), "id {}", e.id);
        n += 1;
    }
    assert_eq!(embedded.entries().count(), n);
}

#[test]
fn every_catalog_topic_has_its_schema_registered() {
    let catalog = Catalog::load(&bundled_dir().join("topics.toml")).expect("catalog");
    let reg = registry();
    for t in &catalog.topics {
        let (_, schema) = reg
            .latest_of(&t.subject)
            .unwrap_or_else(|| panic!("{} not registered", t.subject));
        let from_file =
            eventbus_schemas::registry::read_schema(&catalog.dir.join(&t.schema)).expect("schema");
        assert_eq!(*schema, from_file, "{}", t.name);
    }
}

#[test]
fn fastavro_bytes_decode_to_the_expected_values() {
    let dir = bundled_dir().join("testdata");
    let bytes = std::fs::read(dir.join("vehicle_state_v1.bin")).expect("vector");
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("vehicle_state_v1.json")).expect("json"),
    )
    .expect("json");
    let got: VehicleState = Decoder::new(registry())
        .decode_typed(&bytes, None)
        .expect("decode");
    assert_eq!(got.event_id, want["event_id"]);
    assert_eq!(got.vehicle_id, want["vehicle_id"]);
    assert_eq!(got.event_time, want["event_time"].as_i64().unwrap());
    assert_eq!(got.position.lat, want["position"]["lat"].as_f64().unwrap());
    assert_eq!(got.position.heading_deg, Some(271.5));
    assert_eq!(got.speed_kph, 48.25);
    assert_eq!(got.status, VehicleStatus::Charging);
    assert_eq!(got.odometer_km, Some(120_345.75));
    assert_eq!(got.driver_id, None);
    assert_eq!(got.firmware_version.as_deref(), Some("4.2.1"));
}

fn vehicle_state_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(bundled_dir().join("VehicleState.avsc")).unwrap())
        .unwrap()
}

fn reader_from(json: serde_json::Value) -> Arc<Schema> {
    Arc::new(Schema::parse_str(&json.to_string()).expect("reader schema"))
}

fn v1_bytes() -> Vec<u8> {
    std::fs::read(bundled_dir().join("testdata/vehicle_state_v1.bin")).unwrap()
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    match v {
        Value::Record(fields) => &fields.iter().find(|(n, _)| n == name).unwrap().1,
        other => panic!("not a record: {other:?}"),
    }
}

#[test]
fn a_v2_reader_with_an_added_defaulted_field_reads_v1_data() {
    let mut v2 = vehicle_state_json();
    v2["fields"].as_array_mut().unwrap().push(serde_json::json!(
        {"name": "cabin_temp_c", "type": ["null", "float"], "default": null, "doc": "Cabin temperature."}
    ));
    let (_, v) = Decoder::with_reader(registry(), reader_from(v2))
        .decode(&v1_bytes(), None)
        .expect("resolves");
    assert_eq!(
        field(&v, "cabin_temp_c"),
        &Value::Union(0, Box::new(Value::Null))
    );
    assert_eq!(field(&v, "vehicle_id"), &Value::String("veh-0042".into()));
}

#[test]
fn a_reader_without_a_field_skips_it() {
    let mut v2 = vehicle_state_json();
    v2["fields"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["name"] != "firmware_version");
    let (_, v) = Decoder::with_reader(registry(), reader_from(v2))
        .decode(&v1_bytes(), None)
        .expect("resolves");
    match &v {
        Value::Record(fields) => assert!(fields.iter().all(|(n, _)| n != "firmware_version")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reader_needing_a_field_without_default_is_incompatible() {
    let mut v2 = vehicle_state_json();
    v2["fields"].as_array_mut().unwrap().push(serde_json::json!(
        {"name": "depot_id", "type": "string", "doc": "Home depot."}
    ));
    let err = Decoder::with_reader(registry(), reader_from(v2))
        .decode(&v1_bytes(), None)
        .expect_err("no default");
    assert!(
        matches!(err, DecodeError::IncompatibleReader { id: 1, .. }),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Permanent);
}

#[test]
fn each_bad_input_yields_its_typed_error_naming_the_record() {
    let decoder = Decoder::new(registry());
    let origin = Origin {
        topic: "vehicle.state.v1".into(),
        partition: 7,
        offset: 4242,
    };
    let o = Some(&origin);
    let good = v1_bytes();
    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&999u32.to_be_bytes());
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"junk");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated header", vec![0, 0, 0]),
        ("wrong magic", b"{\"json\": true}".to_vec()),
        ("unknown id", unknown),
        ("truncated body", good[..good.len() - 6].to_vec()),
        ("trailing bytes", trailing),
    ];
    for (what, bytes) in cases {
        let err = decoder.decode(&bytes, o).expect_err(what);
        let ok = match what {
            "truncated header" => matches!(err, DecodeError::Truncated { .. }),
            "wrong magic" => matches!(err, DecodeError::WrongMagic { .. }),
            "unknown id" => matches!(err, DecodeError::UnknownSchema { id: 999, .. }),
            "truncated body" => matches!(err, DecodeError::BadBody { .. }),
            _ => matches!(err, DecodeError::TrailingBytes { extra: 4, .. }),
        };
        assert!(ok, "{what}: {err:?}");
        assert!(
            err.to_string().contains("partition 7 offset 4242"),
            "{what}: {err}"
        );
        assert_eq!(err.class(), ErrorClass::Permanent);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..200), id in 0u32..10, framed in any::<bool>()) {
        let decoder = Decoder::new(registry());
        let bytes = if framed { eventbus_schemas::wire::frame(id, &body) } else { body };
        let _ = decoder.decode(&bytes, None);
    }

    #[test]
    fn corrupting_valid_bytes_never_panics(flip in 5usize..200, to in any::<u8>()) {
        let decoder = Decoder::new(registry());
        let mut bytes = v1_bytes();
        let i = flip % bytes.len();
        bytes[i] = to;
        let _ = decoder.decode(&bytes, None);
    }
}

#[test]
fn every_registered_schema_round_trips_through_its_editable_json_form() {
    let registry = registry();
    let decoder = Decoder::new(registry.clone());
    for entry in registry.entries() {
        let schema = registry.get(entry.id).unwrap();
        let value = sample(&schema, 0, &mut Names::new());
        let bytes = encode_value(entry.id, &schema, value).unwrap();
        let (_, decoded) = decoder.decode(&bytes, None).unwrap();
        let json = eventbus_schemas::json::to_json(&decoded, &schema).unwrap();
        let back = eventbus_schemas::json::from_json(&json, &schema).unwrap();
        let again = encode_value(entry.id, &schema, back).unwrap();
        assert_eq!(again, bytes, "{}: {json}", entry.subject);
    }
}

#[test]
fn json_that_does_not_fit_names_the_field() {
    let registry = registry();
    let (id, schema) = registry.latest_of("vehicle.state.v1-value").unwrap();
    let decoder = Decoder::new(registry.clone());
    let event = eventbus_schemas::fleet::FleetGenerator::new(3, 1)
        .next()
        .unwrap();
    let bytes = eventbus_schemas::encode(id, &schema, &event).unwrap();
    let (_, decoded) = decoder.decode(&bytes, None).unwrap();
    let mut json = eventbus_schemas::json::to_json(&decoded, &schema).unwrap();
    json["position"]["lat"] = serde_json::json!("north");
    let err = eventbus_schemas::json::from_json(&json, &schema).unwrap_err();
    assert!(
        err.contains("position.lat") && err.contains("a number"),
        "{err}"
    );
    json["position"]["lat"] = serde_json::json!(1.5);
    json["status"] = serde_json::json!("FLYING");
    let err = eventbus_schemas::json::from_json(&json, &schema).unwrap_err();
    assert!(err.contains("status") && err.contains("FLYING"), "{err}");
    json["status"] = serde_json::json!("IDLE");
    json["colour"] = serde_json::json!("red");
    let err = eventbus_schemas::json::from_json(&json, &schema).unwrap_err();
    assert!(err.contains("colour: no such field"), "{err}");
}

/// The direct (serde into the schema) encoder writes the same bytes as the encoder that
/// goes through a `Value`, for the events the analytics job writes and for VehicleState
/// (unions, a uuid, an enum).
#[test]
fn direct_encoding_writes_the_same_bytes_as_the_value_path() {
    use eventbus_schemas::encode_direct;
    use eventbus_schemas::events::{FleetMinute, FleetMinutePartial, PartialKind};
    let reg = registry();
    let subject = |s: &str| reg.latest_of(s).expect("registered");
    let (id, schema) = subject("analytics.fleet_minute_partials.v1-value");
    let partial = FleetMinutePartial {
        kind: PartialKind::Watermark,
        source_partition: 3,
        source_partitions: 50,
        fleet_id: "fleet-01".to_owned(),
        minute: 1_767_225_600_000,
        watermark: i64::MAX,
        idle: true,
        events: 9,
        vehicles: vec!["veh-0001".to_owned(), "veh-0002".to_owned()],
        driving_events: 4,
        driving_speed_sum: 171.25,
        min_battery_pct: 12.5,
        status_counts: [("DRIVING".to_owned(), 4)].into_iter().collect(),
    };
    assert_eq!(
        encode_direct(id, &schema, &partial).expect("direct"),
        eventbus_schemas::encode(id, &schema, &partial).expect("value path")
    );
    let (id, schema) = subject("analytics.fleet_minute.v1-value");
    let minute = FleetMinute {
        fleet_id: "fleet-01".to_owned(),
        minute: 1_767_225_600_000,
        vehicles_active: 2,
        events: 9,
        avg_speed_kph: 42.8125,
        min_battery_pct: 12.5,
        status_counts: [("IDLE".to_owned(), 5)].into_iter().collect(),
    };
    assert_eq!(
        encode_direct(id, &schema, &minute).expect("direct"),
        eventbus_schemas::encode(id, &schema, &minute).expect("value path")
    );
    let (id, schema) = subject("vehicle.state.v1-value");
    for state in eventbus_schemas::fleet::FleetGenerator::new(20, 3).take(50) {
        assert_eq!(
            encode_direct(id, &schema, &state).expect("direct"),
            eventbus_schemas::encode(id, &schema, &state).expect("value path"),
            "{state:?}"
        );
    }
}
