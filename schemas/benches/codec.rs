//! VehicleState through the wire format: records/s of decode (to a generic value and to
//! the typed struct, generic and hand-written) and of encode, one core. Goal: at least
//! 1M decodes/s.
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventbus_schemas::events::{Position, VehicleState, VehicleStatus};
use eventbus_schemas::fast::VehicleStateDecoder;
use eventbus_schemas::{Decoder, FileRegistry, bundled_dir, encode};

fn event(i: u64) -> VehicleState {
    VehicleState {
        event_id: format!("6f1c2a8e-3b4d-4e5f-8a9b-{i:012x}"),
        vehicle_id: format!("veh-{:04}", i % 400),
        fleet_id: format!("fleet-{:02}", i % 6),
        event_time: 1_767_225_600_000 + i as i64,
        position: Position {
            lat: 52.52 + (i % 100) as f64 * 1e-4,
            lon: 13.405,
            heading_deg: Some(90.0),
        },
        speed_kph: 42.5,
        battery_pct: 81.0,
        status: VehicleStatus::Driving,
        odometer_km: Some(120_345.5),
        driver_id: None,
        firmware_version: Some("4.2.1".into()),
    }
}

fn codec(c: &mut Criterion) {
    let registry = FileRegistry::open(&bundled_dir()).expect("registry");
    let (id, schema) = registry
        .latest_of("vehicle.state.v1-value")
        .expect("registered");
    let events: Vec<VehicleState> = (0..1024).map(event).collect();
    let frames: Vec<Vec<u8>> = events
        .iter()
        .map(|e| encode(id, &schema, e).unwrap())
        .collect();
    let decoder = Decoder::new(registry.clone());

    let mut g = c.benchmark_group("vehicle_state");
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("decode_value", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(decoder.decode(black_box(f), None).unwrap());
            }
        })
    });
    g.bench_function("decode_typed", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(
                    decoder
                        .decode_typed::<VehicleState>(black_box(f), None)
                        .unwrap(),
                );
            }
        })
    });
    let fast = VehicleStateDecoder::new(registry.clone());
    g.bench_function("decode_fast", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(fast.decode(black_box(f), None).unwrap());
            }
        })
    });
    g.bench_function("encode_typed", |b| {
        b.iter(|| {
            for e in &events {
                black_box(encode(id, &schema, black_box(e)).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
