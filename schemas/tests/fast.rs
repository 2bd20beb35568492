//! The hand-written VehicleState decoder agrees with the generic one.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use eventbus_schemas::events::{Position, VehicleState, VehicleStatus};
use eventbus_schemas::fast::VehicleStateDecoder;
use eventbus_schemas::{DecodeError, Decoder, FileRegistry, bundled_dir, encode};
use proptest::prelude::*;

fn registry() -> Arc<FileRegistry> {
    Arc::new(FileRegistry::open(&bundled_dir()).unwrap())
}

fn status() -> impl Strategy<Value = VehicleStatus> {
    prop_oneof![
        Just(VehicleStatus::Driving),
        Just(VehicleStatus::Idle),
        Just(VehicleStatus::Charging),
        Just(VehicleStatus::Maintenance),
        Just(VehicleStatus::Offline),
    ]
}

prop_compose! {
    fn event()(
        uuid in any::<u128>(),
        vehicle in "[a-z0-9-]{0,20}",
        fleet in "\\PC{0,12}",
        time in any::<i64>(),
        lat in any::<f64>(), lon in -180.0f64..180.0,
        heading in proptest::option::of(any::<f32>()),
        speed in 0.0f32..200.0, battery in 0.0f32..100.0,
        status in status(),
        odometer in proptest::option::of(any::<f64>()),
        driver in proptest::option::of("\\PC{0,16}"),
        firmware in proptest::option::of("[0-9.]{1,8}"),
    ) -> VehicleState {
        let u = format!("{uuid:032x}");
        VehicleState {
            event_id: format!("{}-{}-{}-{}-{}", &u[..8], &u[8..12], &u[12..16], &u[16..20], &u[20..]),
            vehicle_id: vehicle,
            fleet_id: fleet,
            event_time: time,
            position: Position { lat, lon, heading_deg: heading },
            speed_kph: speed,
            battery_pct: battery,
            status,
            odometer_km: odometer,
            driver_id: driver,
            firmware_version: firmware,
        }
    }
}

fn same(a: &VehicleState, b: &VehicleState) -> bool {
    // NaN != NaN: compare floats by bits.
    let f = |x: f64| x.to_bits();
    a.event_id.eq_ignore_ascii_case(&b.event_id)
        && a.vehicle_id == b.vehicle_id
        && a.fleet_id == b.fleet_id
        && a.event_time == b.event_time
        && f(a.position.lat) == f(b.position.lat)
        && f(a.position.lon) == f(b.position.lon)
        && a.position.heading_deg.map(f32::to_bits) == b.position.heading_deg.map(f32::to_bits)
        && a.speed_kph.to_bits() == b.speed_kph.to_bits()
        && a.battery_pct.to_bits() == b.battery_pct.to_bits()
        && a.status == b.status
        && a.odometer_km.map(f) == b.odometer_km.map(f)
        && a.driver_id == b.driver_id
        && a.firmware_version == b.firmware_version
}

proptest! {
    #[test]
    fn fast_and_generic_decode_the_same_events(e in event()) {
        let reg = registry();
        let (id, schema) = reg.latest_of("vehicle.state.v1-value").unwrap();
        let bytes = encode(id, &schema, &e).unwrap();
        let fast = VehicleStateDecoder::new(reg.clone()).decode(&bytes, None).unwrap();
        let generic: VehicleState = Decoder::new(reg).decode_typed(&bytes, None).unwrap();
        prop_assert!(same(&fast, &e), "{fast:?} != {e:?}");
        prop_assert!(same(&generic, &e), "{generic:?} != {e:?}");
    }

    #[test]
    fn corrupted_bytes_never_panic_and_never_disagree(i in 5usize..400, to in any::<u8>(), cut in 0usize..8) {
        let reg = registry();
        let mut bytes = std::fs::read(bundled_dir().join("testdata/vehicle_state_v1.bin")).unwrap();
        let n = bytes.len();
        bytes[i % n] = to;
        bytes.truncate(n - cut);
        let fast = VehicleStateDecoder::new(reg.clone()).decode(&bytes, None);
        let generic = Decoder::new(reg).decode_typed::<VehicleState>(&bytes, None);
        if let (Ok(a), Ok(b)) = (&fast, &generic) {
            prop_assert!(same(a, b));
        }
        if fast.is_ok() {
            prop_assert!(generic.is_ok(), "fast accepted what the generic path refuses: {generic:?}");
        }
    }
}

#[test]
fn the_fastavro_vector_decodes_alike_on_both_paths() {
    let reg = registry();
    let bytes = std::fs::read(bundled_dir().join("testdata/vehicle_state_v1.bin")).unwrap();
    let fast = VehicleStateDecoder::new(reg.clone())
        .decode(&bytes, None)
        .unwrap();
    let generic: VehicleState = Decoder::new(reg).decode_typed(&bytes, None).unwrap();
    assert_eq!(fast, generic);
    let mut trailing = bytes.clone();
    trailing.push(0);
    let err = VehicleStateDecoder::new(registry())
        .decode(&trailing, None)
        .unwrap_err();
    assert!(
        matches!(err, DecodeError::TrailingBytes { extra: 1, .. }),
        "{err}"
    );
}

#[test]
fn another_writer_version_goes_through_the_generic_path() {
    // A registry where id 2 is a v2 writer with one more field.
    let dir = tempfile::tempdir().unwrap();
    let v1 = std::fs::read_to_string(bundled_dir().join("VehicleState.avsc")).unwrap();
    let v2 = v1.replacen(
        "\"fields\": [",
        "\"fields\": [\n    {\"name\": \"depot\", \"type\": \"string\", \"default\": \"main\"},",
        1,
    );
    std::fs::write(dir.path().join("v1.avsc"), &v1).unwrap();
    std::fs::write(dir.path().join("v2.avsc"), &v2).unwrap();
    std::fs::write(
        dir.path().join("registry.toml"),
        "[[schema]]\nid = 1\nsubject = \"s\"\nversion = 1\nfile = \"v1.avsc\"\n\
         [[schema]]\nid = 2\nsubject = \"s\"\nversion = 2\nfile = \"v2.avsc\"\n",
    )
    .unwrap();
    let reg = Arc::new(FileRegistry::open(dir.path()).unwrap());
    let v2_schema = reg.get(2).unwrap();
    let mut value = apache_avro::to_value(
        Decoder::new(registry())
            .decode_typed::<VehicleState>(
                &std::fs::read(bundled_dir().join("testdata/vehicle_state_v1.bin")).unwrap(),
                None,
            )
            .unwrap(),
    )
    .unwrap();
    if let apache_avro::types::Value::Record(fields) = &mut value {
        fields.insert(
            0,
            (
                "depot".into(),
                apache_avro::types::Value::String("north".into()),
            ),
        );
    }
    let bytes = eventbus_schemas::encode_value(2, &v2_schema, value).unwrap();
    let event = VehicleStateDecoder::new(reg).decode(&bytes, None).unwrap();
    assert_eq!(event.vehicle_id, "veh-0042");
}
