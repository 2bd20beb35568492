//! Dead letters on librdkafka's in-process mock cluster: poison of five kinds, a
//! transient sink outage under retry, and a dead-letter queue that cannot be written.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use eventbus_jobs::topic_io;
use eventbus_tests::dlq::{JobSetup, TestSink, dlq_config, poison_stream, run_job};
use eventbus_tests::dlq_scenarios as scenarios;
use eventbus_tests::unique;
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaRespErr;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_of_five_kinds_goes_to_the_dlq_once_and_every_good_record_is_delivered() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let run = scenarios::poison_goes_to_the_dlq_once(Some(&cluster), &brokers).await;
    // The same volume without poison, for the record: how much longer poison makes a
    // run. The guarantee is asserted in the scenario (every partition committed to its
    // end); this is the figure.
    let clean = scenarios::clean_run_elapsed(Some(&cluster), &brokers).await;
    eprintln!(
        "10k records: clean {:.2} s, with 2% poison {:.2} s (factor {:.2})",
        clean.as_secs_f64(),
        run.elapsed.as_secs_f64(),
        run.elapsed.as_secs_f64() / clean.as_secs_f64()
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_sink_outage_inside_the_retry_budget_dead_letters_nothing() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    eventbus_tests::dlq_scenarios::a_transient_sink_outage_inside_the_retry_budget_dead_letters_nothing(Some(&cluster), &cluster.bootstrap_servers()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_send_the_record_to_the_dlq_with_its_attempts() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    eventbus_tests::dlq_scenarios::retries_exhausted_send_the_record_to_the_dlq_with_its_attempts(
        Some(&cluster),
        &cluster.bootstrap_servers(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_one_partition_backs_off_the_others_keep_flowing() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    scenarios::while_one_partition_backs_off_the_others_keep_flowing(
        Some(&cluster),
        &cluster.bootstrap_servers(),
    )
    .await;
}
