//! VehicleState through the wire format: records/s of decode (to a generic value and to
//! the typed struct, generic and hand-written), of the body check, and of encode, one
//! core. Goal: at least 1M decodes/s.
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventbus_schemas::events::VehicleState;
use eventbus_schemas::fast::VehicleStateDecoder;
use eventbus_schemas::fleet::FleetGenerator;
use eventbus_schemas::{Decoder, FileRegistry, bundled_dir, encode};

fn codec(c: &mut Criterion) {
    let registry = FileRegistry::open(&bundled_dir()).expect("registry");
    let (id, schema) = registry
        .latest_of("vehicle.state.v1-value")
        .expect("registered");
    let events: Vec<VehicleState> = FleetGenerator::new(400, 1).take(1024).collect();
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
    // The check the warehouse runs before arrow-avro sees a body.
    let check = eventbus_schemas::validate::BodyCheck::of(&schema).expect("compiles");
    g.bench_function("body_check", |b| {
        b.iter(|| {
            for f in &frames {
                check.check(black_box(&f[5..])).unwrap();
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
