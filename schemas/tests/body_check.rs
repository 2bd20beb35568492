//! The body check (`eventbus_schemas::validate`) against apache-avro's decoder: the same
//! verdict on any bytes, and each known fault named by its field.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]
use apache_avro::from_avro_datum;
use proptest::prelude::*;

use apache_avro::Schema;
use eventbus_schemas::validate::BodyCheck;

fn catalog_schemas() -> Vec<(String, Schema)> {
    let dir = eventbus_schemas::bundled_dir();
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("schemas dir") {
        let path = e.expect("entry").path();
        if path.extension().is_some_and(|x| x == "avsc") {
            let json = std::fs::read_to_string(&path).expect("read");
            let schema = Schema::parse_str(&json).expect("parses");
            out.push((path.display().to_string(), schema));
        }
    }
    assert!(out.len() >= 5, "the catalog's schemas: {}", out.len());
    out
}

/// Whether the check and apache-avro agree on `body`. apache-avro has one leniency
/// that arrow-avro does not share, and neither does the check: inside a union, a body
/// that ends early reads as null. So where apache-avro accepts and the check refuses,
/// the check must be saying the body ends early.
fn agrees(check: &BodyCheck, schema: &Schema, body: &[u8]) -> bool {
    let mut rest = body;
    let theirs = from_avro_datum(schema, &mut rest, None).is_ok() && rest.is_empty();
    match check.check(body) {
        Ok(()) => theirs,
        Err(e) => !theirs || e.cut_short,
    }
}

fn reference(schema: &Schema, body: &[u8]) -> bool {
    let mut rest = body;
    from_avro_datum(schema, &mut rest, None).is_ok() && rest.is_empty()
}

const STATE: &str = r#"{"type":"record","name":"S","fields":[
    {"name":"id","type":{"type":"string","logicalType":"uuid"}},
    {"name":"n","type":"int"},
    {"name":"pos","type":{"type":"record","name":"P","fields":[
        {"name":"lat","type":"double"},{"name":"note","type":["null","string"]}]}},
    {"name":"status","type":{"type":"enum","name":"St","symbols":["A","B","C"]}},
    {"name":"tags","type":{"type":"map","values":{"type":"array","items":"long"}}},
    {"name":"ok","type":"boolean"},
    {"name":"fx","type":{"type":"fixed","name":"F","size":2}}]}"#;

fn good_state() -> Vec<u8> {
    let mut b = vec![72]; // 36 chars
    b.extend_from_slice(b"0f8fad5b-d9cb-469f-a165-70867728950e");
    b.push(4); // n = 2
    b.extend_from_slice(&1.5f64.to_le_bytes());
    b.extend_from_slice(&[2, 4, b'h', b'i']); // note: branch 1, "hi"
    b.push(4); // status C
    // tags {"k": [-2]}: a map block of 1; key "k"; an array block of -1 item, 1 byte
    // long; the item; the array's end; the map's end. Then ok = true, fx = [9, 9].
    b.extend_from_slice(&[2, 2, b'k', 1, 2, 3, 0, 0, 1, 9, 9]);
    b
}

#[test]
fn each_known_fault_is_named() {
    let c = BodyCheck::new(STATE).expect("compiles");
    let schema = Schema::parse_str(STATE).expect("parses");
    let good = good_state();
    assert_eq!(c.check(&good), Ok(()));
    assert!(reference(&schema, &good));

    let status_at = 1 + 36 + 1 + 8 + 4;
    let mut bad_enum = good.clone();
    bad_enum[status_at] = 6; // index 3 of 3
    let e = c.check(&bad_enum).expect_err("enum");
    assert_eq!(e.field, "status");
    assert!(e.reason.contains("enum index 3"), "{e}");

    let mut trailing = good.clone();
    trailing.push(0);
    assert!(
        c.check(&trailing)
            .expect_err("trailing")
            .reason
            .contains("left over")
    );

    let mut twice = good.clone();
    twice.extend_from_slice(&good);
    assert!(c.check(&twice).is_err());

    let short = &good[..good.len() - 1];
    let e = c.check(short).expect_err("short");
    assert_eq!(e.field, "fx");
    assert!(e.reason.contains("cut short"), "{e}");

    let mut bad_utf8 = good.clone();
    bad_utf8[1 + 36 + 1 + 8 + 2] = 0xff; // inside "hi"
    assert_eq!(c.check(&bad_utf8).expect_err("utf8").field, "pos.note");

    let mut bad_uuid = good.clone();
    bad_uuid[1] = b'z';
    assert_eq!(c.check(&bad_uuid).expect_err("uuid").field, "id");

    let mut bad_bool = good.clone();
    let ok_at = good.len() - 3;
    bad_bool[ok_at] = 2;
    assert_eq!(c.check(&bad_bool).expect_err("bool").field, "ok");

    for bad in [
        &bad_enum, &trailing, &twice, &bad_utf8, &bad_uuid, &bad_bool,
    ] {
        assert!(!reference(&schema, bad));
    }
    assert!(!reference(&schema, short));
}

#[test]
fn a_recursive_schema_compiles_and_deep_nesting_is_refused() {
    let c = BodyCheck::new(
        r#"{"type":"record","name":"N","fields":[{"name":"next","type":["null","N"]}]}"#,
    )
    .expect("compiles");
    assert_eq!(c.check(&[2, 2, 0]), Ok(()));
    let deep = [vec![2u8; 200], vec![0]].concat();
    assert!(c.check(&deep).expect_err("deep").reason.contains("deeper"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any bytes: never a panic, and the same verdict as apache-avro.
    #[test]
    fn agrees_with_apache_avro_on_any_bytes(
        body in proptest::collection::vec(any::<u8>(), 0..96),
        pick in any::<usize>(),
    ) {
        let schemas = catalog_schemas();
        let (name, schema) = &schemas[pick % schemas.len()];
        let check = BodyCheck::of(schema).expect("compiles");
        prop_assert!(agrees(&check, schema, &body), "{name}: {body:?}");
    }

    /// Valid bodies with one byte changed, cut or added: the same verdict as
    /// apache-avro, so the faults that matter (a bad enum index, a cut) are reached.
    #[test]
    fn agrees_with_apache_avro_near_valid_bodies(
        at in any::<usize>(),
        byte in any::<u8>(),
        how in 0u8..3,
    ) {
        let c = BodyCheck::new(STATE).expect("compiles");
        let schema = Schema::parse_str(STATE).expect("parses");
        let mut body = good_state();
        let i = at % body.len();
        match how {
            0 => body[i] = byte,
            1 => body.truncate(i),
            _ => body.insert(i, byte),
        }
        prop_assert!(agrees(&c, &schema, &body), "{body:?}");
    }

    /// The same near a real `VehicleState`, with its nested record, enum, unions,
    /// decimal-free doubles and uuid.
    #[test]
    fn agrees_with_apache_avro_near_a_vehicle_state(
        at in any::<usize>(),
        byte in any::<u8>(),
        how in 0u8..3,
    ) {
        let (schema, mut body) = vehicle_state_body();
        let c = BodyCheck::of(&schema).expect("compiles");
        prop_assert!(c.check(&body).is_ok());
        let i = at % body.len();
        match how {
            0 => body[i] = byte,
            1 => body.truncate(i),
            _ => body.insert(i, byte),
        }
        prop_assert!(agrees(&c, &schema, &body), "{body:?}");
    }
}

fn vehicle_state_body() -> (Schema, Vec<u8>) {
    use eventbus_schemas::events::{Position, VehicleState, VehicleStatus};
    use eventbus_schemas::{FileRegistry, bundled_dir};
    let registry = FileRegistry::open(&bundled_dir()).expect("registry");
    let (id, schema) = registry
        .latest_of("vehicle.state.v1-value")
        .expect("registered");
    let event = VehicleState {
        event_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
        vehicle_id: "veh-0001".into(),
        fleet_id: "fleet-01".into(),
        event_time: 1_767_225_600_000,
        position: Position {
            lat: 52.52,
            lon: 13.405,
            heading_deg: Some(90.0),
        },
        speed_kph: 42.5,
        battery_pct: 81.0,
        status: VehicleStatus::Driving,
        odometer_km: None,
        driver_id: Some("d-7".into()),
        firmware_version: Some("4.2.1".into()),
    };
    let framed = eventbus_schemas::encode(id, &schema, &event).expect("encodes");
    (schema.as_ref().clone(), framed[5..].to_vec())
}
