//! Tests against a real Kafka-protocol broker (tansu) in its own process. `make test`
//! starts it and runs these with `--features real-broker`.
#![cfg(feature = "real-broker")]
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use eventbus_jobs::config::JobFile;
use eventbus_jobs::{mirror, topic_io};
use eventbus_tests::{
    JobProcess, StreamProducer, Tansu, duplicates, mirror_config, missing, positions_by_value,
    shared_brokers, unique, wait_committed_to_end, wait_records,
};
use rdkafka::message::Message;

const READ: Duration = Duration::from_secs(120);

async fn topics(brokers: &str, partitions: i32) -> (String, String) {
    let (input, output) = (unique("in"), unique("out"));
    topic_io::create_topics(brokers, &[(&input, partitions), (&output, partitions)])
        .await
        .expect("create topics");
    (input, output)
}

/// Reads input and output; returns the source offsets found in the output.
fn read_positions(
    brokers: &str,
    input: &str,
    output: &str,
) -> std::collections::BTreeMap<i32, Vec<i64>> {
    let inp = topic_io::read_all(brokers, input, READ).expect("read input");
    let out = topic_io::read_all(brokers, output, READ).expect("read output");
    positions_by_value(&inp, &out)
}

/// Reads the output and checks that every input record is in it; returns the number of
/// duplicates.
fn check_complete(brokers: &str, input: &str, output: &str) -> usize {
    let ends = topic_io::end_offsets(brokers, input).expect("ends");
    let seen = read_positions(brokers, input, output);
    let lost = missing(&ends, &seen);
    assert!(
        lost.is_empty(),
        "{} records lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    duplicates(&seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_end_to_end_keeps_order_and_commits_the_end() {
    let brokers = shared_brokers();
    let (input, output) = topics(&brokers, 3).await;
    let group = unique("group");
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

    let mut file = JobFile::parse(&format!(
        "[source]\ngroup_id = \"{group}\"\ntopics = [\"{input}\"]\ncommit_interval_ms = 200\n\
         [mirror]\noutput = \"{output}\"\npartitioning = \"source\"\nstamp_source = false\n"
    ))
    .expect("job file");
    file.kafka.set("bootstrap.servers", brokers.clone());
    let job = mirror::job(&file).expect("job");
    let stats = job.stats();
    let target: i64 = ends.values().sum();
    let report = job
        .run(async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            while stats.committed().values().sum::<i64>() < target && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("job runs");
    assert_eq!(report.delivered, n);
    assert_eq!(
        topic_io::committed(&brokers, &group, &input).expect("committed"),
        ends
    );

    let out = topic_io::read_all(&brokers, &output, READ).expect("read output");
    assert_eq!(out.len() as u64, n);
    let inp = topic_io::read_all(&brokers, &input, READ).expect("read input");
    let seen = positions_by_value(&inp, &out);
    for (p, offsets) in &seen {
        assert_eq!(
            offsets,
            &(0..ends[p]).collect::<Vec<_>>(),
            "partition {p} out of order"
        );
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_mid_stream_and_restarted_loses_nothing() {
    let brokers = shared_brokers();
    let (input, output) = topics(&brokers, 3).await;
    let group = unique("group");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = mirror_config(dir.path(), &brokers, &group, &input, &output, "");
    let producer = StreamProducer::start(&brokers, &input, 30_000, 4_000);

    let mut job = JobProcess::mirror(&config, dir.path(), "first");
    wait_records(&brokers, &output, 5_000, Duration::from_secs(60));
    job.kill();
    // Killed mid-stream: the producer is still writing.
    let mut job = JobProcess::mirror(&config, dir.path(), "second");
    let produced = producer.finish();
    assert_eq!(produced, 30_000);
    wait_committed_to_end(&brokers, &group, &input, Duration::from_secs(120), || {
        job.log_tail()
    });
    job.signal("TERM");
    assert!(job.wait(Duration::from_secs(60)).success());
    let dups = check_complete(&brokers, &input, &output);
    eprintln!("crash test: {dups} duplicates after SIGKILL (allowed)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaving_mid_stream_hands_its_partitions_over_without_loss() {
    let brokers = shared_brokers();
    let (input, output) = topics(&brokers, 6).await;
    let group = unique("group");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = mirror_config(dir.path(), &brokers, &group, &input, &output, "");
    let producer = StreamProducer::start(&brokers, &input, 36_000, 3_000);

    let mut a = JobProcess::mirror(&config, dir.path(), "a");
    let mut b = JobProcess::mirror(&config, dir.path(), "b");
    wait_records(&brokers, &output, 9_000, Duration::from_secs(90));
    a.signal("TERM");
    assert!(
        a.wait(Duration::from_secs(60)).success(),
        "a: {}",
        a.log_tail()
    );
    assert_eq!(producer.finish(), 36_000);
    wait_committed_to_end(&brokers, &group, &input, Duration::from_secs(120), || {
        format!("a:\n{}\nb:\n{}", a.log_tail(), b.log_tail())
    });
    b.signal("TERM");
    assert!(
        b.wait(Duration::from_secs(60)).success(),
        "b: {}",
        b.log_tail()
    );
    let dups = check_complete(&brokers, &input, &output);
    eprintln!("rebalance test: {dups} duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_exits_zero_and_commits_exactly_what_was_delivered() {
    let brokers = shared_brokers();
    let (input, output) = topics(&brokers, 3).await;
    let group = unique("group");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = mirror_config(dir.path(), &brokers, &group, &input, &output, "");
    let producer = StreamProducer::start(&brokers, &input, 30_000, 4_000);

    let mut job = JobProcess::mirror(&config, dir.path(), "job");
    wait_records(&brokers, &output, 6_000, Duration::from_secs(60));
    job.signal("TERM");
    let status = job.wait(Duration::from_secs(60));
    assert!(status.success(), "exit {status:?}: {}", job.log_tail());
    producer.finish();

    let committed = topic_io::committed(&brokers, &group, &input).expect("committed");
    let seen = read_positions(&brokers, &input, &output);
    assert_eq!(duplicates(&seen), 0);
    assert!(
        !committed.is_empty(),
        "nothing committed: {}",
        job.log_tail()
    );
    for p in 0..3 {
        let c = committed.get(&p).copied().unwrap_or(0);
        let delivered = seen.get(&p).cloned().unwrap_or_default();
        // Everything the sink acknowledged is committed, and nothing more.
        assert_eq!(
            delivered,
            (0..c).collect::<Vec<_>>(),
            "partition {p}: committed {c}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_is_survived() {
    let mut tansu = Tansu::start();
    let brokers = tansu.brokers.clone();
    let (input, output) = topics(&brokers, 3).await;
    let group = unique("group");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = mirror_config(dir.path(), &brokers, &group, &input, &output, "");
    let producer = StreamProducer::start(&brokers, &input, 16_000, 2_000);

    let mut job = JobProcess::mirror(&config, dir.path(), "job");
    wait_records(&brokers, &output, 2_000, Duration::from_secs(60));
    // Down mid-stream, for longer than a few reconnect attempts.
    tansu.stop();
    std::thread::sleep(Duration::from_secs(3));
    tansu.restart();
    assert_eq!(producer.finish(), 16_000);
    wait_committed_to_end(&brokers, &group, &input, Duration::from_secs(180), || {
        job.log_tail()
    });
    job.signal("TERM");
    assert!(
        job.wait(Duration::from_secs(60)).success(),
        "{}",
        job.log_tail()
    );
    let dups = check_complete(&brokers, &input, &output);
    eprintln!("broker restart: {dups} duplicates");
}
