//! The analytics job on the mock cluster, in process, in live mode: input partitions
//! that never receive a record stop holding results back once idle (their owner says so
//! for every partition it is assigned), and the results are the input's.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus_jobs::analytics::{AnalyticsArgs, AnalyticsConfig};
use eventbus_jobs::config::JobFile;
use eventbus_jobs::topic_io;
use eventbus_schemas::events::{FleetMinute, VehicleState};
use eventbus_schemas::{Decoder, FileRegistry};
use eventbus_tests::unique;
use rdkafka::ClientConfig;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_input_partitions_stop_holding_results_back_once_idle() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let config = AnalyticsConfig {
        input: unique("an_in"),
        output: unique("an_out"),
        partials: unique("an_partials"),
        progress: unique("an_progress"),
        idle_timeout_ms: 1_000,
        dead_letters: false,
        ..AnalyticsConfig::default()
    };
    // Three input partitions; every record goes to partition 0.
    cluster.create_topic(&config.input, 3, 1).expect("topic");
    for t in [&config.output, &config.partials, &config.progress] {
        cluster.create_topic(t, 2, 1).expect("topic");
    }
    let registry = Arc::new(FileRegistry::embedded().expect("registry"));
    let (id, schema) = registry
        .latest_of("vehicle.state.v1-value")
        .expect("schema");
    let events: Vec<VehicleState> = eventbus_schemas::fleet::FleetGenerator::new(30, 9)
        .take(6_000) // about two minutes of event time
        .collect();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    for e in &events {
        let bytes = eventbus_schemas::encode(id, &schema, e).expect("encode");
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(&config.input)
                    .partition(0)
                    .key(e.vehicle_id.as_bytes())
                    .payload(&bytes),
            )
            .map_err(|(e, _)| e)
            .expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");

    // What the output must hold for every minute the input's watermark has passed.
    let last = events.iter().map(|e| e.event_time).max().unwrap();
    let closed_before = (last - 5_000).div_euclid(60_000) * 60_000;
    let mut expected: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for e in events.iter().filter(|e| e.event_time < closed_before) {
        *expected
            .entry((e.fleet_id.clone(), e.event_time.div_euclid(60_000) * 60_000))
            .or_default() += 1;
    }
    assert!(!expected.is_empty());

    let mut file = JobFile::default();
    file.kafka.set("bootstrap.servers", brokers.clone());
    file.source = Some(eventbus_runtime::SourceConfig::new(
        unique("an_g"),
        Vec::<String>::new(),
    ));
    file.analytics = Some(config.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let job = eventbus_jobs::analytics::run(
        &file,
        &AnalyticsArgs {
            until_caught_up: false,
        },
        async move {
            let _ = stopped.await;
        },
    );
    let decoder = Decoder::new(registry);
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        let got = loop {
            let (b, t) = (brokers.clone(), config.output.clone());
            let out = tokio::task::spawn_blocking(move || {
                topic_io::read_all(&b, &t, Duration::from_secs(10))
            })
            .await
            .expect("join")
            .expect("read output");
            let got: BTreeMap<(String, i64), i64> = out
                .iter()
                .map(|m| {
                    let v: FleetMinute = decoder
                        .decode_typed(m.payload().expect("value"), None)
                        .expect("decode");
                    ((v.fleet_id, v.minute), v.events)
                })
                .collect();
            if got.len() >= expected.len() || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let _ = stop.send(());
        got
    };
    let (report, got) = tokio::join!(job, watch);
    report.expect("the job stops cleanly");
    assert_eq!(got, expected, "every closed fleet-minute, with its count");
}
