//! `eventbus generate`: realistic synthetic events for catalog topics, in the wire format
//! with ids from the embedded file registry, keyed like the real producers key them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use apache_avro::types::Value;
use apache_avro::{Decimal, Schema};
use eventbus_schemas::{Catalog, FileRegistry, encode, encode_value};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{progress, topic_io};
use eventbus_schemas::fleet::{self, FleetGenerator};

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
    /// Event times moved back by up to this many ms at random (vehicle.state.v1), so
    /// each vehicle's events arrive out of order by up to that much.
    pub disorder_ms: u64,
    /// Hide the progress bar.
    pub quiet: bool,
}

/// Produces the records and returns how many each partition acknowledged.
///
/// # Errors
/// The topic is not in the catalog, has no generator or does not exist on the cluster,
/// a record does not encode, or the broker refuses records.
pub fn run(
    brokers: &(impl crate::topic_io::Cluster + ?Sized),
    catalog: &Path,
    opts: &GenerateOptions,
) -> anyhow::Result<BTreeMap<i32, u64>> {
    let catalog = Catalog::load(catalog)
        .with_context(|| format!("loading the catalog {}", catalog.display()))?;
    let spec = catalog
        .topic(&opts.topic)
        .with_context(|| format!("topic {} is not in the catalog", opts.topic))?;
    let registry = FileRegistry::embedded()?;
    let (id, schema) = registry
        .latest_of(&spec.subject)
        .with_context(|| format!("subject {} is not registered", spec.subject))?;
    let records = records_with_disorder(&opts.topic, opts.seed, id, &schema, opts.disorder_ms)?;
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

/// Keyed, encoded records of one topic, endless.
pub type Records = Box<dyn Iterator<Item = anyhow::Result<(String, Vec<u8>)>>>;

/// The generator of `topic`, encoding with schema `id`.
///
/// # Errors
/// The topic has no generator.
pub fn records(topic: &str, seed: u64, id: u32, schema: &Schema) -> anyhow::Result<Records> {
    records_with_disorder(topic, seed, id, schema, 0)
}

/// Like [`records`], with each event time moved back by up to `disorder_ms` at random
/// (seeded too), so the events of one key arrive out of order by up to that much.
///
/// # Errors
/// The topic has no generator, or disorder is asked of one without event times.
pub fn records_with_disorder(
    topic: &str,
    seed: u64,
    id: u32,
    schema: &Schema,
    disorder_ms: u64,
) -> anyhow::Result<Records> {
    let schema = schema.clone();
    if disorder_ms > 0 && topic != "vehicle.state.v1" {
        bail!("--disorder-ms applies to vehicle.state.v1 only, not {topic}");
    }
    let max_shift = i64::try_from(disorder_ms).unwrap_or(i64::MAX);
    let mut jitter = SmallRng::seed_from_u64(seed ^ 0x5eed_d150);
    Ok(match topic {
        "vehicle.state.v1" => Box::new(FleetGenerator::new(400, seed).map(move |mut e| {
            if max_shift > 0 {
                e.event_time -= jitter.random_range(0..=max_shift);
            }
            Ok((e.vehicle_id.clone(), encode(id, &schema, &e)?))
        })),
        "fleet.operations.v1" => by_value(seed, id, schema, fleet_operation),
        "safety.emergency.v1" => by_value(seed, id, schema, emergency),
        "vehicle.commands.v1" => by_value(seed, id, schema, command),
        "telemetry.raw.v1" => by_value(seed, id, schema, telemetry),
        "vehicle.alerts.v1" => by_value(seed, id, schema, alert),
        "analytics.fleet_minute.v1" => by_value(seed, id, schema, fleet_minute),
        other => bail!(
            "no generator for topic {other}; there are generators for {}",
            TOPICS.join(", ")
        ),
    })
}

/// Records from a value generator `make(rng, i) -> (key, value)`.
fn by_value(
    seed: u64,
    id: u32,
    schema: Schema,
    make: fn(&mut SmallRng, u64) -> (String, Value),
) -> Records {
    let mut rng = SmallRng::seed_from_u64(seed);
    Box::new((0u64..).map(move |i| {
        let (key, value) = make(&mut rng, i);
        Ok((key, encode_value(id, &schema, value)?))
    }))
}

fn vehicle(rng: &mut SmallRng) -> String {
    format!("veh-{:04}", rng.random_range(0..400))
}

/// An enum symbol drawn with the given weights (any scale); returns (index, symbol).
fn weighted<'a>(rng: &mut SmallRng, symbols: &[(&'a str, u32)]) -> (u32, &'a str) {
    let total: u32 = symbols.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total.max(1));
    for (i, &(symbol, w)) in symbols.iter().enumerate() {
        if x < w {
            return (i as u32, symbol);
        }
        x -= w;
    }
    (0, symbols[0].0)
}

fn pick<'a>(rng: &mut SmallRng, symbols: &[&'a str]) -> (u32, &'a str) {
    let i = rng.random_range(0..symbols.len());
    (i as u32, symbols[i])
}

fn command(rng: &mut SmallRng, i: u64) -> (String, Value) {
    const KIND: [&str; 7] = [
        "LOCK",
        "UNLOCK",
        "START_CHARGING",
        "STOP_CHARGING",
        "REROUTE",
        "EMERGENCY_STOP",
        "OTA_UPDATE",
    ];
    let v = vehicle(rng);
    let (k, name) = pick(rng, &KIND);
    let parameters: std::collections::HashMap<String, Value> = match name {
        "REROUTE" => [(
            "depot".to_owned(),
            Value::String(format!("depot-{}", rng.random_range(0..5))),
        )]
        .into(),
        "OTA_UPDATE" => [("version".to_owned(), Value::String("4.2.1".into()))].into(),
        _ => Default::default(),
    };
    let value = record(vec![
        ("command_id", Value::String(fleet::event_id(i))),
        ("vehicle_id", Value::String(v.clone())),
        ("issued_at", time(i)),
        ("command_type", Value::Enum(k, name.to_owned())),
        ("parameters", Value::Map(parameters)),
        (
            "issued_by",
            Value::String(if rng.random_bool(0.8) {
                "fleet-manager".into()
            } else {
                format!("operator-{}", rng.random_range(0..20))
            }),
        ),
        (
            "expires_at",
            if rng.random_bool(0.5) {
                some(Value::Long(1_767_225_600_000 + i as i64 * 250 + 60_000))
            } else {
                none()
            },
        ),
    ]);
    (v, value)
}

fn telemetry(rng: &mut SmallRng, i: u64) -> (String, Value) {
    const SENSORS: [(&str, f64, f64); 4] = [
        ("motor_temp_c", 40.0, 95.0),
        ("cabin_temp_c", 16.0, 28.0),
        ("tyre_pressure_kpa", 210.0, 260.0),
        ("pack_voltage_v", 350.0, 410.0),
    ];
    let v = vehicle(rng);
    let start = 1_767_225_600_000 + i as i64 * 1_000;
    let readings: Vec<Value> = (0..rng.random_range(4..20))
        .map(|n| {
            let (sensor, lo, hi) = SENSORS[n % SENSORS.len()];
            record(vec![
                ("sensor", Value::String(sensor.to_owned())),
                ("ts", Value::Long(start + n as i64 * 50)),
                (
                    "value",
                    Value::Double((rng.random_range(lo..hi) * 10.0f64).round() / 10.0),
                ),
                ("unit", none()),
            ])
        })
        .collect();
    let end = start + readings.len() as i64 * 50;
    let value = record(vec![
        ("batch_id", Value::String(fleet::event_id(i))),
        ("vehicle_id", Value::String(v.clone())),
        ("window_start", Value::Long(start)),
        ("window_end", Value::Long(end)),
        ("readings", Value::Array(readings)),
    ]);
    (v, value)
}

fn alert(rng: &mut SmallRng, i: u64) -> (String, Value) {
    const RULES: [(&str, &str); 3] = [
        ("speeding", "speed above 110 km/h"),
        ("low_battery", "battery below 15%"),
        ("offline", "no state for 5 minutes"),
    ];
    let v = vehicle(rng);
    let (severity, sname) = pick(rng, &["INFO", "WARNING", "CRITICAL"]);
    let (rule, message) = RULES[rng.random_range(0..RULES.len())];
    let value = record(vec![
        ("alert_id", Value::String(fleet::event_id(i))),
        ("vehicle_id", Value::String(v.clone())),
        (
            "fleet_id",
            Value::String(format!("fleet-{:02}", rng.random_range(0..6))),
        ),
        ("raised_at", time(i)),
        ("severity", Value::Enum(severity, sname.to_owned())),
        ("rule", Value::String(rule.to_owned())),
        ("message", Value::String(message.to_owned())),
        ("source_topic", Value::String("vehicle.state.v1".into())),
        ("source_partition", Value::Int(rng.random_range(0..50))),
        ("source_offset", Value::Long(rng.random_range(0..1_000_000))),
    ]);
    (v, value)
}

fn fleet_minute(rng: &mut SmallRng, i: u64) -> (String, Value) {
    let fleet = format!("fleet-{:02}", i % 6);
    let active = rng.random_range(20..70);
    let statuses: std::collections::HashMap<String, Value> =
        [("DRIVING", 0.55), ("IDLE", 0.3), ("CHARGING", 0.15)]
            .into_iter()
            .map(|(s, share)| {
                (
                    s.to_owned(),
                    Value::Long((f64::from(active) * 30.0 * share) as i64),
                )
            })
            .collect();
    let value = record(vec![
        ("fleet_id", Value::String(fleet.clone())),
        (
            "minute",
            Value::Long(1_767_225_600_000 + (i / 6) as i64 * 60_000),
        ),
        ("vehicles_active", Value::Int(active)),
        ("events", Value::Long(i64::from(active) * 30)),
        (
            "avg_speed_kph",
            Value::Double((rng.random_range(25.0..55.0) * 10.0f64).round() / 10.0),
        ),
        (
            "min_battery_pct",
            Value::Double((rng.random_range(5.0..40.0) * 10.0f64).round() / 10.0),
        ),
        ("status_counts", Value::Map(statuses)),
    ]);
    (fleet, value)
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
    let (kind, kind_name) = weighted(
        rng,
        &[
            ("TRIP_CREATED", 25),
            ("TRIP_STARTED", 20),
            ("TRIP_COMPLETED", 20),
            ("TRIP_CANCELLED", 5),
            ("DISPATCH_ASSIGNED", 20),
            ("CAPACITY_UPDATED", 10),
        ],
    );
    let fleet = format!("fleet-{:02}", rng.random_range(0..6));
    let trip_id = format!("trip-{:08}", i / 4);
    let vehicle = vehicle(rng);
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
        ("operation_type", Value::Enum(kind, kind_name.to_owned())),
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
    let (severity, severity_name) = weighted(
        rng,
        &[("LOW", 50), ("MEDIUM", 30), ("HIGH", 15), ("CRITICAL", 5)],
    );
    let (kind, kind_name) = pick(
        rng,
        &[
            "COLLISION",
            "FIRE",
            "MEDICAL",
            "SYSTEM_FAILURE",
            "MANUAL_ALERT",
        ],
    );
    let vehicle = vehicle(rng);
    let value = record(vec![
        ("emergency_id", Value::String(fleet::event_id(i))),
        ("vehicle_id", Value::String(vehicle.clone())),
        ("event_time", time(i)),
        ("severity", Value::Enum(severity, severity_name.to_owned())),
        ("kind", Value::Enum(kind, kind_name.to_owned())),
        ("lat", Value::Double(52.52 + rng.random_range(-0.1..0.1))),
        ("lon", Value::Double(13.405 + rng.random_range(-0.15..0.15))),
        ("occupants", Value::Int(rng.random_range(0..5))),
        (
            "description",
            if severity >= 2 {
                some(Value::String(format!("{kind_name} reported by vehicle")))
            } else {
                none()
            },
        ),
        ("acknowledged_by", none()),
    ]);
    (vehicle, value)
}

/// `eventbus generate`: produces the records and prints how many each partition got.
///
/// # Errors
/// The catalog or the topic is missing, or the brokers refuse the records.
pub async fn cli_command(args: crate::cli::GenerateArgs) -> anyhow::Result<()> {
    let opts = GenerateOptions {
        topic: args.topic.clone(),
        count: args.count,
        rate: args.rate,
        seed: args.seed,
        disorder_ms: args.disorder_ms,
        quiet: false,
    };
    let kafka = args.cluster.kafka()?;
    let catalog = crate::catalog_file(args.catalog.catalog.as_deref());
    let counts = tokio::task::spawn_blocking(move || run(&kafka, &catalog, &opts)).await??;
    let total: u64 = counts.values().sum();
    println!("produced {total} records to {}", args.topic);
    for (p, n) in counts {
        println!("  partition {p:>3}: {n}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventbus_schemas::Decoder;

    #[test]
    fn disorder_moves_event_times_back_within_the_bound_and_only_where_asked() {
        use eventbus_schemas::events::VehicleState;
        let registry = FileRegistry::embedded().expect("registry");
        let (id, schema) = registry
            .latest_of("vehicle.state.v1-value")
            .expect("subject");
        let decoder = Decoder::new(registry.clone());
        let times = |disorder| -> Vec<(String, i64)> {
            records_with_disorder("vehicle.state.v1", 7, id, &schema, disorder)
                .expect("generator")
                .take(2_000)
                .map(|r| {
                    let (_, v) = r.expect("record");
                    let e: VehicleState = decoder.decode_typed(&v, None).expect("decodes");
                    (e.vehicle_id, e.event_time)
                })
                .collect()
        };
        let ordered = times(0);
        let shuffled = times(2_000);
        let mut out_of_order = 0;
        let mut last: BTreeMap<&str, i64> = BTreeMap::new();
        for ((v, t0), (_, t)) in ordered.iter().zip(&shuffled) {
            assert!((0..=2_000).contains(&(t0 - t)), "moved back by at most 2 s");
            if last.get(v.as_str()).is_some_and(|prev| t < prev) {
                out_of_order += 1;
            }
            last.insert(v, *t);
        }
        assert!(
            out_of_order > 0,
            "some events of a vehicle come out of order"
        );
        assert!(records_with_disorder("fleet.operations.v1", 7, id, &schema, 5).is_err());
    }

    #[test]
    fn every_generator_makes_records_its_schema_decodes() {
        let catalog =
            Catalog::load(&eventbus_schemas::bundled_dir().join("topics.toml")).expect("catalog");
        let registry = FileRegistry::embedded().expect("registry");
        for topic in TOPICS {
            let subject = &catalog.topic(topic).expect("in catalog").subject;
            let (id, schema) = registry.latest_of(subject).expect("registered");
            let decoder = Decoder::new(registry.clone());
            for r in records(topic, 7, id, &schema).expect("generator").take(500) {
                let (key, bytes) = r.expect("encodes");
                assert!(!key.is_empty());
                decoder
                    .decode(&bytes, None)
                    .unwrap_or_else(|e| panic!("{topic}: {e}"));
            }
        }
        let err = records("fleet.unknown.v1", 1, 5, &Schema::Null)
            .err()
            .expect("no generator");
        assert!(err.to_string().contains("fleet.unknown.v1"));
    }
}
