//! `eventbus generate`: realistic synthetic events for catalog topics, in the wire format
//! with ids from the embedded file registry, keyed like the real producers key them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use apache_avro::types::Value;
use apache_avro::{Decimal, Schema};
use eventbus_schemas::{Catalog, FileRegistry, SchemaRegistry, encode, encode_value};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::fleet::{self, FleetGenerator};
use crate::{progress, topic_io};

/// Topics with a generator.
pub const TOPICS: [&str; 3] = [
    "vehicle.state.v1",
    "fleet.operations.v1",
    "safety.emergency.v1",
];

/// What to produce.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Catalog topic.
    pub topic: String,
    /// Records to produce.
    pub count: u64,
    /// Records per second; 0 means as fast as the broker takes them.
    pub rate: u64,
    /// Seed: the same seed gives the same records.
    pub seed: u64,
    /// Hide the progress bar.
    pub quiet: bool,
}

/// Produces the records and returns how many each partition acknowledged.
///
/// # Errors
/// The topic is not in the catalog or has no generator, a record does not encode, or
/// the broker refuses records.
pub fn run(
    brokers: &str,
    catalog: &Path,
    opts: &GenerateOptions,
) -> anyhow::Result<BTreeMap<i32, u64>> {
    let catalog = Catalog::load(catalog)?;
    let spec = catalog
        .topic(&opts.topic)
        .with_context(|| format!("topic {} is not in the catalog", opts.topic))?;
    let registry = FileRegistry::embedded()?;
    let (id, schema) = registry
        .latest(&spec.subject)
        .with_context(|| format!("subject {} is not registered", spec.subject))?;
    let records = records(&opts.topic, opts.seed, id, &schema)?;
    let bar = progress::bar(opts.count, "produced", opts.quiet);
    let started = Instant::now();
    let rate = opts.rate;
    let mut failed = None;
    let paced = records
        .take(usize::try_from(opts.count).unwrap_or(usize::MAX))
        .enumerate()
        .map_while(|(i, r)| {
            if rate > 0 {
                let due = Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            r.map_err(|e| failed = Some(e)).ok()
        });
    let counts =
        topic_io::produce_by_partition(brokers, &opts.topic, paced, |n| bar.set_position(n))?;
    bar.finish_and_clear();
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(counts)
}

type Records = Box<dyn Iterator<Item = anyhow::Result<(String, Vec<u8>)>>>;

fn records(topic: &str, seed: u64, id: u32, schema: &Schema) -> anyhow::Result<Records> {
    let schema = schema.clone();
    Ok(match topic {
        "vehicle.state.v1" => Box::new(
            FleetGenerator::new(400, seed)
                .map(move |e| Ok((e.vehicle_id.clone(), encode(id, &schema, &e)?))),
        ),
        "fleet.operations.v1" => {
            let mut rng = SmallRng::seed_from_u64(seed);
            Box::new((0u64..).map(move |i| {
                let (key, value) = fleet_operation(&mut rng, i);
                Ok((key, encode_value(id, &schema, value)?))
            }))
        }
        "safety.emergency.v1" => {
            let mut rng = SmallRng::seed_from_u64(seed);
            Box::new((0u64..).map(move |i| {
                let (key, value) = emergency(&mut rng, i);
                Ok((key, encode_value(id, &schema, value)?))
            }))
        }
        other => bail!(
            "no generator for topic {other} yet; there are generators for {}",
            TOPICS.join(", ")
        ),
    })
}

fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn some(v: Value) -> Value {
    Value::Union(1, Box::new(v))
}

fn none() -> Value {
    Value::Union(0, Box::new(Value::Null))
}

fn time(i: u64) -> Value {
    Value::Long(1_767_225_600_000 + i as i64 * 250)
}

fn point(rng: &mut SmallRng) -> Value {
    record(vec![
        ("lat", Value::Double(52.52 + rng.random_range(-0.1..0.1))),
        ("lon", Value::Double(13.405 + rng.random_range(-0.15..0.15))),
    ])
}

fn fleet_operation(rng: &mut SmallRng, i: u64) -> (String, Value) {
    const TYPES: [&str; 6] = [
        "TRIP_CREATED",
        "TRIP_STARTED",
        "TRIP_COMPLETED",
        "TRIP_CANCELLED",
        "DISPATCH_ASSIGNED",
        "CAPACITY_UPDATED",
    ];
    let kind = match rng.random_range(0..100) {
        0..=24 => 0,
        25..=44 => 1,
        45..=64 => 2,
        65..=69 => 3,
        70..=89 => 4,
        _ => 5,
    };
    let fleet = format!("fleet-{:02}", rng.random_range(0..6));
    let trip_id = format!("trip-{:08}", i / 4);
    let vehicle = format!("veh-{:04}", rng.random_range(0..400));
    let trip = (kind <= 3).then(|| {
        let cents: i64 = rng.random_range(450..9_500);
        record(vec![
            ("trip_id", Value::String(trip_id.clone())),
            (
                "vehicle_id",
                if kind == 0 {
                    none()
                } else {
                    some(Value::String(vehicle.clone()))
                },
            ),
            ("origin", point(rng)),
            ("destination", point(rng)),
            ("passenger_count", Value::Int(rng.random_range(1..5))),
            (
                "fare",
                if kind == 2 {
                    some(Value::Decimal(Decimal::from(
                        cents.to_be_bytes()[3..].to_vec(),
                    )))
                } else {
                    none()
                },
            ),
        ])
    });
    let dispatch = (kind == 4).then(|| {
        record(vec![
            ("trip_id", Value::String(trip_id.clone())),
            ("vehicle_id", Value::String(vehicle.clone())),
            ("eta_seconds", Value::Int(rng.random_range(60..900))),
        ])
    });
    let capacity = (kind == 5).then(|| {
        let total = rng.random_range(40..80);
        record(vec![
            (
                "region",
                Value::String(format!("region-{}", rng.random_range(0..4))),
            ),
            ("available_vehicles", Value::Int(rng.random_range(0..total))),
            ("total_vehicles", Value::Int(total)),
        ])
    });
    let value = record(vec![
        ("operation_id", Value::String(fleet::event_id(i))),
        ("fleet_id", Value::String(fleet.clone())),
        ("event_time", time(i)),
        (
            "operation_type",
            Value::Enum(kind, TYPES[kind as usize].to_owned()),
        ),
        ("trip", trip.map_or_else(none, some)),
        ("dispatch", dispatch.map_or_else(none, some)),
        ("capacity", capacity.map_or_else(none, some)),
        (
            "cancel_reason",
            if kind == 3 {
                some(Value::String("passenger no-show".into()))
            } else {
                none()
            },
        ),
    ]);
    (fleet, value)
}

fn emergency(rng: &mut SmallRng, i: u64) -> (String, Value) {
    const SEVERITY: [&str; 4] = ["LOW", "MEDIUM", "HIGH", "CRITICAL"];
    const KIND: [&str; 5] = [
        "COLLISION",
        "FIRE",
        "MEDICAL",
        "SYSTEM_FAILURE",
        "MANUAL_ALERT",
    ];
    let severity = match rng.random_range(0..100) {
        0..=49 => 0,
        50..=79 => 1,
        80..=94 => 2,
        _ => 3,
    };
    let kind = rng.random_range(0..KIND.len() as u32);
    let vehicle = format!("veh-{:04}", rng.random_range(0..400));
    let value = record(vec![
        ("emergency_id", Value::String(fleet::event_id(i))),
        ("vehicle_id", Value::String(vehicle.clone())),
        ("event_time", time(i)),
        (
            "severity",
            Value::Enum(severity, SEVERITY[severity as usize].to_owned()),
        ),
        ("kind", Value::Enum(kind, KIND[kind as usize].to_owned())),
        ("lat", Value::Double(52.52 + rng.random_range(-0.1..0.1))),
        ("lon", Value::Double(13.405 + rng.random_range(-0.15..0.15))),
        ("occupants", Value::Int(rng.random_range(0..5))),
        (
            "description",
            if severity >= 2 {
                some(Value::String(format!(
                    "{} reported by vehicle",
                    KIND[kind as usize]
                )))
            } else {
                none()
            },
        ),
        ("acknowledged_by", none()),
    ]);
    (vehicle, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventbus_schemas::Decoder;

    #[test]
    fn every_generator_makes_records_its_schema_decodes() {
        let catalog =
            Catalog::load(&eventbus_schemas::bundled_dir().join("topics.toml")).expect("catalog");
        let registry = FileRegistry::embedded().expect("registry");
        for topic in TOPICS {
            let subject = &catalog.topic(topic).expect("in catalog").subject;
            let (id, schema) = registry.latest(subject).expect("registered");
            let decoder = Decoder::new(registry.clone());
            for r in records(topic, 7, id, &schema).expect("generator").take(500) {
                let (key, bytes) = r.expect("encodes");
                assert!(!key.is_empty());
                decoder
                    .decode(&bytes, None)
                    .unwrap_or_else(|e| panic!("{topic}: {e}"));
            }
        }
        let err = records("telemetry.raw.v1", 1, 5, &Schema::Null)
            .err()
            .expect("no generator");
        assert!(err.to_string().contains("telemetry.raw.v1"));
    }
}
