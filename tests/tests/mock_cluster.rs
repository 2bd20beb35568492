//! End-to-end tests on librdkafka's in-process mock cluster: fast, no service needed.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use eventbus_jobs::config::JobFile;
use eventbus_jobs::{mirror, topic_io};
use eventbus_runtime::{
    Classify, ErrorClass, KafkaProperties, KafkaSource, RuntimeError, SourceConfig,
};
use eventbus_runtime::{Job, memory::CollectSink};
use eventbus_tests::{duplicates, mirrored_offsets, missing, unique};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;

fn mirror_file(brokers: &str, group: &str, input: &str, output: &str) -> JobFile {
    let mut f = JobFile::parse(&format!(
        "[source]\ngroup_id = \"{group}\"\ntopics = [\"{input}\"]\ncommit_interval_ms = 100\n\
         [mirror]\noutput = \"{output}\"\npartitioning = \"source\"\n"
    ))
    .expect("valid job file");
    f.kafka.set("bootstrap.servers", brokers);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_of_100k_records_keeps_every_record_in_order_and_commits_the_end() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    cluster.create_topic(&input, 3, 1).expect("topic");
    cluster.create_topic(&output, 3, 1).expect("topic");
    let n = 100_000u64;
    let records = (0..n).map(|i| {
        (
            format!("vehicle-{}", i % 300),
            format!("event-{i}").into_bytes(),
        )
    });
    assert_eq!(
        topic_io::produce(&brokers, &input, records, |_| {}).expect("produce"),
        n
    );
    let ends = topic_io::end_offsets(&brokers, &input).expect("ends");

    let job = mirror::job(&mirror_file(&brokers, &group, &input, &output)).expect("job");
    let stats = job.stats();
    let target: i64 = ends.values().sum();
    let report = job
        .run(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while stats.committed().values().sum::<i64>() < target && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("job runs");
    assert_eq!(report.consumed, n);
    assert_eq!(report.delivered, n);

    let committed = topic_io::committed(&brokers, &group, &input).expect("committed");
    assert_eq!(committed, ends, "committed offsets equal the end offsets");

    let out = topic_io::read_all(&brokers, &output, Duration::from_secs(60)).expect("read output");
    let inp = topic_io::read_all(&brokers, &input, Duration::from_secs(60)).expect("read input");
    assert_eq!(out.len() as u64, n);
    let seen = mirrored_offsets(&out);
    assert!(missing(&ends, &seen).is_empty());
    assert_eq!(duplicates(&seen), 0);
    for (p, offsets) in &seen {
        let want: Vec<i64> = (0..ends[p]).collect();
        assert_eq!(offsets, &want, "partition {p} out of order");
    }
    // Same key, value and order as the input, partition by partition.
    for p in 0..3 {
        let a: Vec<_> = inp
            .iter()
            .filter(|m| m.partition() == p)
            .map(|m| (m.key(), m.payload()))
            .collect();
        let b: Vec<_> = out
            .iter()
            .filter(|m| m.partition() == p)
            .map(|m| (m.key(), m.payload()))
            .collect();
        assert_eq!(a, b, "partition {p} differs from its input");
    }
}

#[tokio::test]
async fn unreachable_brokers_fail_fast_with_a_clear_error() {
    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", "127.0.0.1:1");
    let mut source = SourceConfig::new("g", ["vehicle.state.v1"]);
    source.startup_timeout_ms = 2_000;
    let run = Job::builder("t")
        .source(KafkaSource::new(kafka, source))
        .sink(CollectSink::new())
        .build()
        .expect("job")
        .run(std::future::pending());
    let err = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("returns in bounded time, not a hang")
        .expect_err("brokers are unreachable");
    assert!(
        matches!(err, RuntimeError::BrokersUnreachable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    assert_eq!(err.class(), ErrorClass::Fatal);
}

#[tokio::test]
async fn a_missing_topic_is_named() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let present = unique("present");
    cluster.create_topic(&present, 1, 1).expect("topic");
    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", brokers);
    let run = Job::builder("t")
        .source(KafkaSource::new(
            kafka,
            SourceConfig::new("g", [present.as_str(), "fleet.nosuch.v1"]),
        ))
        .sink(CollectSink::new())
        .build()
        .expect("job")
        .run(std::future::pending());
    let err = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("bounded")
        .expect_err("topic is missing");
    assert!(
        matches!(&err, RuntimeError::TopicMissing { topic, .. } if topic == "fleet.nosuch.v1"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unknown_librdkafka_property_is_named() {
    let mut f = mirror_file("127.0.0.1:1", "g", "a.b.v1", "c.d.v1");
    f.kafka.set("fetch.max.bites", "10");
    let err = match mirror::job(&f) {
        Ok(job) => job
            .run(std::future::pending())
            .await
            .err()
            .map(anyhow::Error::from),
        Err(e) => Some(e),
    }
    .expect("an unknown property fails");
    assert!(format!("{err:#}").contains("fetch.max.bites"), "{err:#}");
}

#[tokio::test]
async fn auto_commit_cannot_be_switched_on() {
    let mut kafka = KafkaProperties::new();
    kafka
        .set("bootstrap.servers", "127.0.0.1:1")
        .set("enable.auto.commit", "true");
    let err = Job::builder("t")
        .source(KafkaSource::new(kafka, SourceConfig::new("g", ["a.b.v1"])))
        .sink(CollectSink::<bytes::Bytes>::new())
        .build()
        .expect("job")
        .run(std::future::pending())
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("kafka.enable.auto.commit"),
        "{err}"
    );
}
