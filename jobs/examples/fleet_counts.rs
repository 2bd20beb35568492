//! A windowed job: events per fleet per minute of event time, printed as each minute
//! closes. The analytics job (`eventbus run analytics`) is the full version, exact
//! across partitions; this one aggregates each input partition on its own.
//!
//! ```sh
//! cargo run --example fleet_counts -- 127.0.0.1:9092
//! ```
use std::sync::Arc;

use bytes::Bytes;
use eventbus_operators::window::{Count, Windows};
use eventbus_operators::windowed::{WindowResult, WindowSettings, Windowed};
use eventbus_runtime::event_time::EventTime;
use eventbus_runtime::{
    Ack, Job, KafkaProperties, KafkaSource, Record, Sink, SinkError, SourceConfig,
};
use eventbus_schemas::events::VehicleState;
use eventbus_schemas::{FileRegistry, fast::VehicleStateDecoder};

/// Prints each window's result and acknowledges it at once.
#[derive(Clone)]
struct Print;

impl Sink<WindowResult<String, u64>> for Print {
    async fn send(&self, r: Record<WindowResult<String, u64>>, ack: Ack) -> Result<(), SinkError> {
        let w = &r.value;
        println!(
            "{} minute {} (partition {}): {} events",
            w.key,
            w.window.start / 60_000,
            r.partition,
            w.value
        );
        ack.done();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    eventbus_runtime::telemetry::init_logging(Default::default(), "info");
    let brokers = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9092".to_owned());
    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", brokers);
    let decoder = VehicleStateDecoder::new(Arc::new(FileRegistry::embedded()?));

    let counts = Windowed::new(
        WindowSettings {
            windows: Windows::Tumbling { size_ms: 60_000 },
            out_of_orderness_ms: 5_000, // a record may be 5 s behind the newest
            lateness_ms: 0,
            max_state_bytes: 64 << 20, // over this, the job stops with an error
        },
        EventTime::Extract(Arc::new(|r: &Record<VehicleState>| {
            Some(r.value.event_time)
        })),
        |v: &VehicleState| v.fleet_id.clone(), // the key
        |_| (),                                // what Count adds
        Count,
        Print,
    );
    let report = Job::builder("fleet-counts")
        .source(KafkaSource::new(
            kafka,
            SourceConfig::new("fleet-counts", ["vehicle.state.v1"]),
        ))
        .try_map(move |v: Bytes| decoder.decode(&v, None))
        .sink(counts.clone())
        .build()?
        .run(eventbus_runtime::shutdown::signals())
        .await?;
    println!("consumed {}, late {}", report.consumed, counts.late());
    Ok(())
}
