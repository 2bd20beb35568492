//! Rebalances on the mock cluster that used to stop consumption for good, with no error.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use eventbus_jobs::topic_io;
use eventbus_runtime::{Job, KafkaProperties, KafkaSource, RuntimeConfig, SourceConfig};
use eventbus_tests::{GateSink, Running, unique};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;

/// librdkafka keeps the application's pause flag on a partition across unassign and
/// assign. A partition paused by backpressure, revoked, and assigned back to the same
/// member must flow again once its sink answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_paused_by_backpressure_flows_again_after_it_comes_back() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let (input, group) = (unique("in"), unique("group"));
    cluster.create_topic(&input, 2, 1).expect("topic");
    let n = 4_000u64;
    let records = (0..n).map(|i| (format!("k{i}"), vec![b'x'; 50]));
    topic_io::produce(&brokers, &input, records, |_| {}).expect("produce");
    let ends: i64 = topic_io::end_offsets(&brokers, &input)
        .expect("ends")
        .values()
        .sum();
    assert_eq!(ends, n as i64);

    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", &brokers);
    kafka.set("session.timeout.ms", "6000");
    kafka.set("heartbeat.interval.ms", "500");
    let mut source = SourceConfig::new(group.clone(), [input.as_str()]);
    source.commit_interval_ms = 100;
    let runtime = RuntimeConfig {
        max_in_flight_per_partition: 100,
        max_in_flight: 10_000,
        drain_timeout_ms: 300,
        ..RuntimeConfig::default()
    };
    let sink = GateSink::default();
    let job = Job::builder("paused-comes-back")
        .config(runtime)
        .source(KafkaSource::new(kafka, source))
        .sink(sink.clone())
        .build()
        .expect("job");
    let running = Running::start(job);
    let stats = running.stats.clone();

    // The sink holds every ack: both partitions fill to their bound and are paused.
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.consumed() < 200 {
        assert!(
            Instant::now() < deadline,
            "the job never filled its partitions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let paused_at = stats.consumed();
    assert!(
        paused_at < n,
        "backpressure never paused: {paused_at} consumed"
    );

    // A second member joins and takes a partition (its drain times out: the sink holds
    // the acks), then leaves, and the partition comes back to the job.
    let other_brokers = brokers.clone();
    let other_group = group.clone();
    let other_input = input.clone();
    tokio::task::spawn_blocking(move || {
        let other: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &other_brokers)
            .set("group.id", &other_group)
            .set("enable.auto.commit", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .create()
            .expect("second member");
        other.subscribe(&[&other_input]).expect("subscribe");
        let deadline = Instant::now() + Duration::from_secs(60);
        while other.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
            assert!(
                Instant::now() < deadline,
                "the second member got no partition"
            );
            // Messages it polls are dropped uncommitted: the job reads them again.
            let _ = other.poll(Duration::from_millis(100));
        }
        other.unsubscribe();
        for _ in 0..10 {
            let _ = other.poll(Duration::from_millis(100));
        }
    })
    .await
    .expect("second member");

    // The sink answers again: every record of both partitions must be done and committed.
    sink.open();
    running.wait_committed(ends, Duration::from_secs(90)).await;
    let report = running.stop().await;
    assert_eq!(report.committed_total(), ends);
    assert!(report.delivered >= n, "{report:?}");
}
