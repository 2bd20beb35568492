//! The windowed aggregation on the mock cluster: per-key counts per minute of Kafka
//! timestamp, emitted once the partition's watermark passes each minute; a record held
//! in an open window is never committed past, yet does not count as in flight, so a
//! window longer than the in-flight bound never stalls the partition.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use eventbus_operators::window::{Count, Windows};
use eventbus_operators::windowed::{WindowResult, WindowSettings, Windowed};
use eventbus_runtime::event_time::EventTime;
use eventbus_runtime::memory::CollectSink;
use eventbus_runtime::{Job, KafkaProperties, KafkaSource, RuntimeConfig, SourceConfig};
use eventbus_tests::{Running, unique};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const MINUTE: i64 = 60_000;
/// 2026-11-30 00:00 UTC.
const T0: i64 = 1_796_004_000_000;

fn produce(brokers: &str, topic: &str, records: &[(&str, i64)]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    for (key, ts) in records {
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(topic)
                    .key(key.as_bytes())
                    .payload(key.as_bytes())
                    .timestamp(*ts),
            )
            .map_err(|(e, _)| e)
            .expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
}

type Results = CollectSink<WindowResult<String, u64>>;

fn counting(results: Results) -> Windowed<Bytes, String, Count, Results> {
    counting_within(results, usize::MAX)
}

fn counting_within(
    results: Results,
    max_state_bytes: usize,
) -> Windowed<Bytes, String, Count, Results> {
    Windowed::new(
        WindowSettings {
            windows: Windows::Tumbling { size_ms: MINUTE },
            out_of_orderness_ms: 0,
            lateness_ms: 0,
            max_state_bytes,
        },
        EventTime::Kafka,
        |v: &Bytes| String::from_utf8_lossy(v).into_owned(),
        |_| (),
        Count,
        results,
    )
}

fn job_on(
    brokers: &str,
    topic: &str,
    runtime: RuntimeConfig,
    sink: Windowed<Bytes, String, Count, Results>,
) -> Running {
    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", brokers);
    let mut source = SourceConfig::new(unique("g"), [topic]);
    source.commit_interval_ms = 100;
    let job = Job::builder("windowed")
        .config(runtime)
        .source(KafkaSource::new(kafka, source))
        .sink(sink)
        .build()
        .expect("job");
    Running::start(job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_windows_are_emitted_exactly_and_the_open_one_holds_the_commit_point() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let topic = unique("states");
    cluster.create_topic(&topic, 1, 1).expect("topic");
    produce(
        &brokers,
        &topic,
        &[
            ("a", T0 + 1_000),
            ("b", T0 + 2_000),
            ("a", T0 + 3_000),
            ("b", T0 + 59_999),
            ("a", T0 + 30_000),
            ("a", T0 + MINUTE + 5_000),
            // Offset 6: opens minute 2 and closes minutes 0 and 1.
            ("b", T0 + 2 * MINUTE + 1),
            // Late: minute 0 is closed.
            ("a", T0 + 10_000),
        ],
    );
    let results = Results::new();
    let sink = counting(results.clone());
    let running = job_on(&brokers, &topic, RuntimeConfig::default(), sink.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while results.records().len() < 3 || sink.late() < 1 {
        assert!(Instant::now() < deadline, "results: {:?}", results.values());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for a commit or two: it must stay at the open window's record.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed: i64 = running.stats.committed().values().sum();
    let report = running.stop().await;
    assert_eq!(report.consumed, 8);
    let mut got: Vec<(i64, String, u64)> = results
        .values()
        .into_iter()
        .map(|r| (r.window.start - T0, r.key, r.value))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (0, "a".to_owned(), 3),
            (0, "b".to_owned(), 2),
            (MINUTE, "a".to_owned(), 1),
        ]
    );
    for r in results.values() {
        assert_eq!(r.window.end - r.window.start, MINUTE);
        assert!(r.window.contains(r.window.start));
    }
    assert_eq!(sink.late(), 1);
    assert_eq!(
        committed, 6,
        "committed up to the record that opened the still-open window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_longer_than_the_in_flight_bound_does_not_stall_the_partition() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let topic = unique("busy");
    cluster.create_topic(&topic, 1, 1).expect("topic");
    // 500 records in one minute, with 50 in flight at most.
    let records: Vec<(&str, i64)> = (0..500).map(|i| ("k", T0 + i)).collect();
    produce(&brokers, &topic, &records);
    let runtime = RuntimeConfig {
        max_in_flight_per_partition: 50,
        max_in_flight: 100,
        ..RuntimeConfig::default()
    };
    let results = Results::new();
    let running = job_on(&brokers, &topic, runtime, counting(results.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.stats.consumed() < 500 {
        assert!(
            Instant::now() < deadline,
            "stalled at {} of 500 records",
            running.stats.consumed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let committed: i64 = running.stats.committed().values().sum();
    let report = running.stop().await;
    assert_eq!(report.consumed, 500);
    assert!(results.records().is_empty(), "the minute is still open");
    assert_eq!(committed, 0, "nothing committed past the open window");
}

/// Window state over its byte bound stops the job with an error naming the bound, before
/// the state grows past it; nothing is committed past the open window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_state_over_its_byte_bound_stops_the_job_with_an_error_naming_it() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let topic = unique("wide");
    cluster.create_topic(&topic, 1, 1).expect("topic");
    // 2,000 keys in one minute: far more state than 16 KiB.
    let keys: Vec<String> = (0..2_000).map(|i| format!("k{i}")).collect();
    let records: Vec<(&str, i64)> = keys.iter().map(|k| (k.as_str(), T0 + 1)).collect();
    produce(&brokers, &topic, &records);
    let sink = counting_within(Results::new(), 16 << 10);
    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", brokers.as_str());
    let group = unique("g");
    let mut source = SourceConfig::new(group, [topic.as_str()]);
    source.commit_interval_ms = 100;
    let job = Job::builder("windowed")
        .source(KafkaSource::new(kafka, source))
        .sink(sink.clone())
        .build()
        .expect("job");
    let stats = job.stats();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        job.run(std::future::pending::<()>()),
    )
    .await
    .expect("the job stops by itself");
    let error = outcome.expect_err("the bound stops the job").to_string();
    assert!(error.contains("max_state_bytes"), "{error}");
    assert!(error.contains("16384"), "{error}");
    assert!(
        sink.state_bytes() <= 16 << 10,
        "{} bytes held",
        sink.state_bytes()
    );
    assert_eq!(stats.committed().values().sum::<i64>(), 0);
}

/// Session windows by key: a gap of 30 s closes a session; its result is the records of
/// the run, and the open session holds the commit point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_close_after_the_gap_and_count_each_run_of_a_key() {
    use eventbus_operators::sessions::{SessionSettings, SessionWindowed};
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let topic = unique("sessions");
    cluster.create_topic(&topic, 1, 1).expect("topic");
    const S: i64 = 1_000;
    produce(
        &brokers,
        &topic,
        &[
            ("a", T0),
            ("b", T0 + 5 * S),
            ("a", T0 + 20 * S),
            ("a", T0 + 10 * S), // out of order, inside a's first session
            ("a", T0 + 120 * S),
            // Offset 5: its watermark closes every session above; its own stays open.
            ("c", T0 + 300 * S),
            ("b", T0 + S), // late: b's session [T0+1s, T0+31s) would be closed
        ],
    );
    let results = Results::new();
    let sink = SessionWindowed::new(
        SessionSettings {
            gap_ms: 30 * S,
            out_of_orderness_ms: 0,
            lateness_ms: 0,
            max_state_bytes: usize::MAX,
        },
        EventTime::Kafka,
        |v: &Bytes| String::from_utf8_lossy(v).into_owned(),
        |_| (),
        Count,
        results.clone(),
    );
    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", brokers.as_str());
    let mut source = SourceConfig::new(unique("g"), [topic.as_str()]);
    source.commit_interval_ms = 100;
    let job = Job::builder("sessions")
        .source(KafkaSource::new(kafka, source))
        .sink(sink.clone())
        .build()
        .expect("job");
    let running = Running::start(job);
    let deadline = Instant::now() + Duration::from_secs(30);
    while results.records().len() < 3 || sink.late() < 1 {
        assert!(Instant::now() < deadline, "results: {:?}", results.values());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed: i64 = running.stats.committed().values().sum();
    let report = running.stop().await;
    assert_eq!(report.consumed, 7);
    let mut got: Vec<(String, i64, i64, u64)> = results
        .values()
        .into_iter()
        .map(|r| (r.key, r.window.start - T0, r.window.end - T0, r.value))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("a".to_owned(), 0, 50 * S, 3),
            ("a".to_owned(), 120 * S, 150 * S, 1),
            ("b".to_owned(), 5 * S, 35 * S, 1),
        ]
    );
    assert_eq!(sink.late(), 1);
    assert_eq!(committed, 5, "committed up to the open session's record");
}
