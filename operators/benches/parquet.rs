//! Wire-format VehicleState bytes → Parquet bytes in memory, rows/s on one core: the
//! Parquet sink's per-file work (arrow-avro decoding, the Kafka columns, zstd Parquet)
//! without the object store. Goal: ≥ 1M rows/s.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventbus_operators::sinks::parquet::wire_to_parquet;
use eventbus_schemas::events::{Position, VehicleState, VehicleStatus};
use eventbus_schemas::{FileRegistry, encode};

const ROWS: usize = 100_000;

fn records() -> (u32, String, Vec<Bytes>) {
    let registry = FileRegistry::embedded().unwrap();
    let (id, schema) = registry.latest_of("vehicle.state.v1-value").unwrap();
    let statuses = [
        VehicleStatus::Driving,
        VehicleStatus::Idle,
        VehicleStatus::Charging,
    ];
    let records = (0..ROWS)
        .map(|i| {
            let v = VehicleState {
                event_id: format!("6f1c8a4e-1b2d-4c3e-9f00-{i:012}"),
                vehicle_id: format!("veh-{:04}", i % 400),
                fleet_id: format!("fleet-{}", i % 7),
                event_time: 1_795_773_600_000 + i as i64,
                position: Position {
                    lat: 52.5 + (i % 100) as f64 * 1e-4,
                    lon: 13.4,
                    heading_deg: Some((i % 360) as f32),
                },
                speed_kph: (i % 120) as f32,
                battery_pct: 80.0,
                status: statuses[i % 3],
                odometer_km: Some(12_345.6),
                driver_id: (i % 2 == 0).then(|| format!("drv-{}", i % 50)),
                firmware_version: Some("4.2.1".into()),
            };
            Bytes::from(encode(id, &schema, &v).unwrap())
        })
        .collect();
    (id, serde_json::to_string(&*schema).unwrap(), records)
}

fn bench(c: &mut Criterion) {
    let (id, json, records) = records();
    let mut g = c.benchmark_group("vehicle_state_to_parquet");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.sample_size(10);
    g.bench_function("wire_bytes_to_parquet_bytes", |b| {
        b.iter(|| wire_to_parquet(id, &json, &records, 1).unwrap());
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
