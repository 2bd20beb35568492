//! The README's job: log vehicles driving faster than 110 km/h.
//!
//! ```sh
//! cargo run --example speeding -- 127.0.0.1:9092
//! ```
use std::sync::Arc;

use bytes::Bytes;
use eventbus_operators::LogSink;
use eventbus_runtime::{Job, KafkaProperties, KafkaSource, SourceConfig};
use eventbus_schemas::{FileRegistry, fast::VehicleStateDecoder};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    eventbus_runtime::telemetry::init_logging(Default::default(), "info");
    let brokers = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9092".to_owned());
    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", brokers);
    let decoder = VehicleStateDecoder::new(Arc::new(FileRegistry::embedded()?));

    let report = Job::builder("speeding")
        .source(KafkaSource::new(
            kafka,
            SourceConfig::new("speeding", ["vehicle.state.v1"]),
        ))
        .try_map(move |v: Bytes| decoder.decode(&v, None)) // bad bytes: a Permanent DecodeError
        .filter(|r| r.value.speed_kph > 110.0)
        .map(|e| format!("{} at {} km/h", e.vehicle_id, e.speed_kph))
        .sink(LogSink::default())
        .build()?
        .run(eventbus_runtime::shutdown::signals())
        .await?;
    println!("consumed {}, logged {}", report.consumed, report.delivered);
    Ok(())
}
