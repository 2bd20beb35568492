//! Dead letters on librdkafka's in-process mock cluster: poison of five kinds, a
//! transient sink outage under retry, and a dead-letter queue that cannot be written.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use eventbus_dlq::DlqConfig;
use eventbus_jobs::topic_io;
use eventbus_operators::RetryPolicy;
use eventbus_tests::dlq::{
    JobSetup, TestSink, check_poison_outcome, poison_stream, read_letters, run_job,
};
use eventbus_tests::unique;
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaRespErr;

fn dlq_config(topic: &str) -> DlqConfig {
    let mut cfg = DlqConfig::default();
    cfg.pii
        .insert(topic.to_owned(), vec!["driver_id".to_owned()]);
    cfg.group = Some("dlq-test-group".to_owned());
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_of_five_kinds_goes_to_the_dlq_once_and_every_good_record_is_delivered() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let topic = unique("vehicle.state");
    let dlq = format!("{topic}.dlq");
    cluster.create_topic(&topic, 4, 1).unwrap();
    cluster.create_topic(&dlq, 4, 1).unwrap();
    let stream = poison_stream(10_000, 50);
    assert_eq!(stream.poison.len(), 200);
    topic_io::produce(&brokers, &topic, stream.records.clone(), |_| {}).unwrap();

    let sink = TestSink::new();
    let run = run_job(JobSetup {
        brokers: &brokers,
        group: &unique("g"),
        topic: &topic,
        dlq: dlq_config(&topic),
        retry: None,
        sink: sink.clone(),
        kafka: vec![],
        until_committed: 10_000,
        timeout: Duration::from_secs(60),
    })
    .await;
    let report = run.result.expect("the job ends cleanly");
    // No partition stalled behind its poison: every one is committed to its end.
    let ends = topic_io::end_offsets(&brokers, &topic).unwrap();
    for (p, end) in &ends {
        let tp = report
            .committed
            .iter()
            .find(|(tp, _)| tp.partition == *p)
            .map(|(_, o)| *o);
        assert_eq!(tp, Some(*end), "partition {p} committed to its end");
    }
    let letters = read_letters(&brokers, &dlq);
    check_poison_outcome(&stream, &topic, &letters, &sink.collected.records());
    eprintln!("10k records with 2% poison: {:?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_sink_outage_inside_the_retry_budget_dead_letters_nothing() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let topic = unique("vehicle.state");
    let dlq = format!("{topic}.dlq");
    cluster.create_topic(&topic, 3, 1).unwrap();
    cluster.create_topic(&dlq, 3, 1).unwrap();
    // Clean records only.
    let stream = poison_stream(3_000, usize::MAX);
    topic_io::produce(&brokers, &topic, stream.records.clone(), |_| {}).unwrap();

    let sink = TestSink::new();
    sink.down.store(true, Ordering::Relaxed);
    let (down, refused) = (sink.down.clone(), sink.refused_while_down.clone());
    tokio::spawn(async move {
        // The outage lasts 2 s from the first refusal: well inside the retry budget.
        while refused.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        down.store(false, Ordering::Relaxed);
    });
    let run = run_job(JobSetup {
        brokers: &brokers,
        group: &unique("g"),
        topic: &topic,
        dlq: dlq_config(&topic),
        retry: Some(RetryPolicy {
            initial_delay_ms: 50,
            multiplier: 2.0,
            max_delay_ms: 1_000,
            max_attempts: 100,
            max_elapsed_ms: 30_000,
        }),
        sink: sink.clone(),
        kafka: vec![],
        until_committed: 3_000,
        timeout: Duration::from_secs(90),
    })
    .await;
    run.result.expect("the job ends cleanly");
    assert!(
        sink.refused_while_down.load(Ordering::Relaxed) > 0,
        "the outage was seen"
    );
    let total: i64 = topic_io::end_offsets(&brokers, &dlq)
        .unwrap()
        .values()
        .sum();
    assert_eq!(total, 0, "nothing reached the DLQ");
    let mut delivered: Vec<(i32, i64)> = sink
        .collected
        .records()
        .iter()
        .map(|r| (r.partition, r.offset))
        .collect();
    delivered.sort_unstable();
    delivered.dedup();
    assert_eq!(delivered.len(), 3_000, "everything delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_send_the_record_to_the_dlq_with_its_attempts() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let topic = unique("vehicle.state");
    let dlq = format!("{topic}.dlq");
    cluster.create_topic(&topic, 1, 1).unwrap();
    cluster.create_topic(&dlq, 1, 1).unwrap();
    let stream = poison_stream(5, usize::MAX);
    topic_io::produce(&brokers, &topic, stream.records.clone(), |_| {}).unwrap();
    let sink = TestSink::new();
    sink.down.store(true, Ordering::Relaxed);
    let run = run_job(JobSetup {
        brokers: &brokers,
        group: &unique("g"),
        topic: &topic,
        dlq: dlq_config(&topic),
        retry: Some(RetryPolicy {
            initial_delay_ms: 10,
            multiplier: 2.0,
            max_delay_ms: 40,
            max_attempts: 3,
            max_elapsed_ms: 10_000,
        }),
        sink,
        kafka: vec![],
        until_committed: 5,
        timeout: Duration::from_secs(60),
    })
    .await;
    run.result.expect("the job ends cleanly");
    let letters = read_letters(&brokers, &dlq);
    assert_eq!(letters.len(), 5);
    for l in &letters {
        assert_eq!(l.context.class.as_deref(), Some("transient"));
        assert_eq!(l.context.attempts, Some(3));
        assert_eq!(l.context.stage.as_deref(), Some("sink:test"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_dlq_stops_the_job_without_committing_past_the_record() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let topic = unique("vehicle.state");
    cluster.create_topic(&topic, 1, 1).unwrap();
    // Poison at offsets 99, 199, ...: the first one cannot be dead-lettered.
    let stream = poison_stream(1_000, 100);
    topic_io::produce(&brokers, &topic, stream.records.clone(), |_| {}).unwrap();
    let dlq = format!("{topic}.dlq");
    cluster.create_topic(&dlq, 1, 1).unwrap();
    // The broker refuses every request for the DLQ topic.
    cluster
        .topic_error(
            &dlq,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let mut cfg = dlq_config(&topic);
    cfg.max_attempts = 2;
    cfg.retry_backoff_ms = 50;
    let group = unique("g");
    let run = run_job(JobSetup {
        brokers: &brokers,
        group: &group,
        topic: &topic,
        dlq: cfg,
        retry: None,
        sink: TestSink::new(),
        kafka: vec![("message.timeout.ms", "2000")],
        until_committed: 1_000,
        timeout: Duration::from_secs(60),
    })
    .await;
    let err = run.result.expect_err("the job must stop");
    let text = err.to_string();
    assert!(text.contains(&dlq), "{text}");
    // It names a poison record (several may fail at once; any of them may be first).
    assert!(
        (1..=10).any(|k| text.contains(&format!("offset {}", k * 100 - 1))),
        "{text}"
    );
    let committed = topic_io::committed(&brokers, &group, &topic).unwrap();
    assert!(
        committed.get(&0).copied().unwrap_or(0) <= 99,
        "committed past the record: {committed:?}"
    );
}
