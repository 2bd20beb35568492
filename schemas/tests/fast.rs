//! The hand-written decoders (VehicleState, FleetMinutePartial) agree with the generic
//! one, on what our code writes and on bytes it never would.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use eventbus_schemas::events::{
    FleetMinutePartial, PartialKind, Position, VehicleReading, VehicleState, VehicleStatus,
};
use eventbus_schemas::fast::{
    FleetMinutePartialDecoder, VehicleReadingDecoder, VehicleStateDecoder,
};
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
        let generic: VehicleState = Decoder::new(reg.clone()).decode_typed(&bytes, None).unwrap();
        prop_assert!(same(&fast, &e), "{fast:?} != {e:?}");
        prop_assert!(same(&generic, &e), "{generic:?} != {e:?}");
        let reading = VehicleReadingDecoder::new(reg.clone()).decode(&bytes, None).unwrap();
        let generic: VehicleReading = Decoder::new(reg).decode_typed(&bytes, None).unwrap();
        prop_assert!(same_reading(&reading, &e), "{reading:?} != {e:?}");
        prop_assert!(same_reading(&generic, &e), "{generic:?} != {e:?}");
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
        // The projection accepts exactly what the full fast decoder does.
        let reading = VehicleReadingDecoder::new(registry()).decode(&bytes, None);
        prop_assert_eq!(reading.is_ok(), fast.is_ok(), "{:?}", reading);
        if let (Ok(r), Ok(v)) = (&reading, &fast) {
            prop_assert!(same_reading(r, v));
        }
    }
}

fn same_reading(r: &VehicleReading, v: &VehicleState) -> bool {
    r.vehicle_id == v.vehicle_id
        && r.fleet_id == v.fleet_id
        && r.event_time == v.event_time
        && r.speed_kph.to_bits() == v.speed_kph.to_bits()
        && r.battery_pct.to_bits() == v.battery_pct.to_bits()
        && r.status == v.status
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

fn kind() -> impl Strategy<Value = PartialKind> {
    prop_oneof![
        Just(PartialKind::Partial),
        Just(PartialKind::Watermark),
        Just(PartialKind::Progress),
    ]
}

prop_compose! {
    fn partial()(
        kind in kind(),
        source_partition in any::<i32>(),
        source_partitions in any::<i32>(),
        fleet_id in "\\PC{0,12}",
        minute in any::<i64>(),
        watermark in any::<i64>(),
        idle in any::<bool>(),
        events in any::<i64>(),
        vehicles in proptest::collection::vec("\\PC{0,10}", 0..12),
        driving_events in any::<i64>(),
        driving_speed_sum in any::<f64>(),
        min_battery_pct in any::<f64>(),
        status_counts in proptest::collection::hash_map("[A-Z]{0,12}", any::<i64>(), 0..6),
    ) -> FleetMinutePartial {
        FleetMinutePartial {
            kind, source_partition, source_partitions, fleet_id, minute, watermark, idle,
            events, vehicles, driving_events, driving_speed_sum, min_battery_pct, status_counts,
        }
    }
}

fn same_partial(a: &FleetMinutePartial, b: &FleetMinutePartial) -> bool {
    let f = |x: f64| x.to_bits();
    a.kind == b.kind
        && a.source_partition == b.source_partition
        && a.source_partitions == b.source_partitions
        && a.fleet_id == b.fleet_id
        && a.minute == b.minute
        && a.watermark == b.watermark
        && a.idle == b.idle
        && a.events == b.events
        && a.vehicles == b.vehicles
        && a.driving_events == b.driving_events
        && f(a.driving_speed_sum) == f(b.driving_speed_sum)
        && f(a.min_battery_pct) == f(b.min_battery_pct)
        && a.status_counts == b.status_counts
}

fn partial_bytes(p: &FleetMinutePartial) -> Vec<u8> {
    let reg = registry();
    let (id, schema) = reg
        .latest_of("analytics.fleet_minute_partials.v1-value")
        .unwrap();
    encode(id, &schema, p).unwrap()
}

proptest! {
    #[test]
    fn fast_and_generic_decode_the_same_partials(p in partial()) {
        let reg = registry();
        let bytes = partial_bytes(&p);
        let fast = FleetMinutePartialDecoder::new(reg.clone()).decode(&bytes, None).unwrap();
        let generic: FleetMinutePartial = Decoder::new(reg).decode_typed(&bytes, None).unwrap();
        prop_assert!(same_partial(&fast, &p), "{fast:?} != {p:?}");
        prop_assert!(same_partial(&generic, &p), "{generic:?} != {p:?}");
    }

    /// Bytes from any producer: a valid partial with bytes changed and cut, or bytes
    /// with no structure at all after the wire header.
    #[test]
    fn arbitrary_partial_bytes_never_panic_and_never_disagree(
        p in partial(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in 0usize..16,
        noise in proptest::collection::vec(any::<u8>(), 0..64),
        structured in any::<bool>(),
    ) {
        let reg = registry();
        let mut bytes = partial_bytes(&p);
        if structured {
            let n = bytes.len();
            for (i, to) in edits {
                // The wire header (magic byte and id) stays, so the body is what varies.
                bytes[5 + i % (n - 5)] = to;
            }
            bytes.truncate(n - cut.min(n - 5));
        } else {
            bytes.truncate(5);
            bytes.extend(noise);
        }
        let fast = FleetMinutePartialDecoder::new(reg.clone()).decode(&bytes, None);
        let generic = Decoder::new(reg).decode_typed::<FleetMinutePartial>(&bytes, None);
        if let (Ok(a), Ok(b)) = (&fast, &generic) {
            prop_assert!(same_partial(a, b), "{a:?} != {b:?}");
        }
        if fast.is_ok() {
            prop_assert!(generic.is_ok(), "fast accepted what the generic path refuses: {generic:?}");
        }
    }
}

#[test]
fn a_negative_block_count_with_its_size_reads_like_a_positive_one() {
    // Avro lets a writer give an array's block count negated, followed by the block's
    // size in bytes; other writers (Java's buffered encoder) do.
    let p = FleetMinutePartial {
        kind: PartialKind::Partial,
        source_partition: 3,
        source_partitions: 8,
        fleet_id: "fleet-01".into(),
        minute: 60_000,
        watermark: 0,
        idle: false,
        events: 2,
        vehicles: vec!["a".into(), "b".into()],
        driving_events: 0,
        driving_speed_sum: 0.0,
        min_battery_pct: 50.0,
        status_counts: [("IDLE".to_owned(), 2)].into(),
    };
    let bytes = partial_bytes(&p);
    // The array starts after kind, the two ints, the fleet, minute, watermark, idle
    // and events: find its count (2 → zigzag 4) followed by "a" (len 1 → 2, 'a').
    let at = bytes
        .windows(3)
        .position(|w| w == [4, 2, b'a'])
        .expect("the vehicles block");
    let mut forged = bytes[..at].to_vec();
    forged.extend([3, 8]); // count -2 (zigzag 3), then a size of 4 bytes (zigzag 8)
    forged.extend(&bytes[at + 1..]);
    let reg = registry();
    let fast = FleetMinutePartialDecoder::new(reg.clone())
        .decode(&forged, None)
        .unwrap();
    let generic: FleetMinutePartial = Decoder::new(reg).decode_typed(&forged, None).unwrap();
    assert!(same_partial(&fast, &p), "{fast:?}");
    assert!(same_partial(&generic, &p), "{generic:?}");
}
