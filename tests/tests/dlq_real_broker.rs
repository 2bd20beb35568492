//! Dead letters on a real Kafka-protocol broker (tansu, its own process), read back by
//! this crate and by Python's confluent-kafka. `make test` runs these with
//! `--features real-broker`.
#![cfg(feature = "real-broker")]
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use eventbus_jobs::topic_io;
use eventbus_tests::dlq::{JobSetup, TestSink, dlq_config, poison_stream, run_job};
use eventbus_tests::dlq_scenarios as s;
use eventbus_tests::{shared_brokers, unique};

/// Reads the DLQ with confluent-kafka and prints one JSON object per letter: the key and
/// the `kafka_dlt-*` / `__connect.errors.*` headers decoded the way those ecosystems
/// write them (Spring: 4- and 8-byte big-endian numbers; Connect: decimal text).
const PY_READER: &str = r#"
import json, struct, sys
from confluent_kafka import Consumer, TopicPartition
brokers, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({"bootstrap.servers": brokers, "group.id": "py-dlq-reader",
              "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([topic])
out, empty = [], 0
while len(out) < n and empty < 60:
    m = c.poll(1.0)
    if m is None:
        empty += 1
        continue
    if m.error():
        continue
    h = {k: v for k, v in (m.headers() or [])}
    out.append({
        "key": m.key().decode(),
        "topic": h["kafka_dlt-original-topic"].decode(),
        "partition": struct.unpack(">i", h["kafka_dlt-original-partition"])[0],
        "offset": struct.unpack(">q", h["kafka_dlt-original-offset"])[0],
        "timestamp": struct.unpack(">q", h["kafka_dlt-original-timestamp"])[0],
        "fqcn": h["kafka_dlt-exception-fqcn"].decode(),
        "message": h["kafka_dlt-exception-message"].decode(),
        "group": h["kafka_dlt-original-consumer-group"].decode(),
        "connect_partition": int(h["__connect.errors.partition"].decode()),
        "connect_offset": int(h["__connect.errors.offset"].decode()),
        "class": h["eventbus.error.class"].decode(),
    })
c.close()
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dlq_once_and_python_reads_the_spring_and_connect_headers() {
    let brokers = shared_brokers();
    let run = s::poison_goes_to_the_dlq_once(None, &brokers).await;
    let (topic, dlq, letters) = (run.topic, run.dlq, run.letters);

    // The same letters through another ecosystem's client.
    let out = eventbus_tests::run_python(PY_READER, &[brokers.as_str(), dlq.as_str(), "200"]);
    let seen: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    assert_eq!(seen.len(), 200);
    for py in &seen {
        let key = py["key"].as_str().unwrap();
        let ours = letters.iter().find(|l| l.key == key).expect("same letter");
        assert_eq!(py["topic"], topic.as_str());
        assert_eq!(
            py["partition"].as_i64(),
            ours.context.partition.map(i64::from)
        );
        assert_eq!(py["offset"].as_i64(), ours.context.offset);
        assert_eq!(py["connect_partition"], py["partition"]);
        assert_eq!(py["connect_offset"], py["offset"]);
        assert_eq!(py["timestamp"].as_i64(), ours.timestamp);
        assert_eq!(py["group"], "dlq-test-group");
        assert_eq!(py["class"], "permanent");
        assert!(!py["fqcn"].as_str().unwrap().is_empty());
        assert!(!py["message"].as_str().unwrap().is_empty());
    }
    // The letter's original coordinates are the record's: its key sits there.
    let original = topic_io::read_all(&brokers, &topic, Duration::from_secs(120)).unwrap();
    for l in &letters {
        let (p, o) = (l.context.partition.unwrap(), l.context.offset.unwrap());
        let m = original
            .iter()
            .find(|m| {
                use rdkafka::Message as _;
                m.partition() == p && m.offset() == o
            })
            .expect("the original exists");
        use rdkafka::Message as _;
        assert_eq!(m.key(), Some(l.key.as_bytes()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dlq_topic_stops_the_job_without_committing_past_the_record() {
    let brokers = shared_brokers();
    let topic = unique("vehicle.state");
    // No DLQ topic, and tansu does not create topics on demand.
    topic_io::create_topics(&brokers, &[(&topic, 1)])
        .await
        .unwrap();
    let stream = poison_stream(1_000, 100);
    topic_io::produce(&brokers, &topic, stream.records.clone(), |_| {}).unwrap();
    let mut cfg = dlq_config(&topic);
    cfg.max_attempts = 2;
    cfg.retry_backoff_ms = 100;
    let group = unique("g");
    let run = run_job(JobSetup {
        brokers: &brokers,
        group: &group,
        topic: &topic,
        dlq: cfg,
        retry: None,
        sink: TestSink::new(),
        kafka: vec![("message.timeout.ms", "3000")],
        until_committed: 1_000,
        timeout: Duration::from_secs(120),
    })
    .await;
    let err = run.result.expect_err("the job must stop");
    let text = err.to_string();
    assert!(text.contains(&format!("{topic}.dlq")), "{text}");
    let committed = topic_io::committed(&brokers, &group, &topic).unwrap();
    assert!(
        committed.get(&0).copied().unwrap_or(0) <= 99,
        "committed past the first poison record at offset 99: {committed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_inspect_count_and_show_the_letters_by_category() {
    s::stats_and_inspect_count_and_show_the_letters_by_category(None, &shared_brokers()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_exactly_the_selected_letters_at_the_rate_and_never_twice() {
    s::replay_sends_exactly_the_selected_letters_at_the_rate_and_never_twice(
        None,
        &shared_brokers(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_edit_import_delivers_the_fixed_records_and_a_bad_edit_produces_nothing() {
    s::export_edit_import_delivers_the_fixed_records_and_a_bad_edit_produces_nothing(
        None,
        &shared_brokers(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_is_parked_after_the_maximum_replays_and_nothing_loops() {
    s::a_letter_is_parked_after_the_maximum_replays_and_nothing_loops(None, &shared_brokers())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_sink_outage_inside_the_retry_budget_dead_letters_nothing() {
    s::a_transient_sink_outage_inside_the_retry_budget_dead_letters_nothing(
        None,
        &shared_brokers(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_send_the_record_to_the_dlq_with_its_attempts() {
    s::retries_exhausted_send_the_record_to_the_dlq_with_its_attempts(None, &shared_brokers())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_one_partition_backs_off_the_others_keep_flowing() {
    s::while_one_partition_backs_off_the_others_keep_flowing(None, &shared_brokers()).await;
}
