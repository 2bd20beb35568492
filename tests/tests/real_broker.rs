//! Tests against a real Kafka-protocol broker (tansu) in its own process. `make test`
//! starts it and runs these with `--features real-broker`.
#![cfg(feature = "real-broker")]
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use eventbus_jobs::topic_io;
use eventbus_tests::{
    JobProcess, StreamProducer, Tansu, duplicates, mirror_config, mirror_end_to_end, missing,
    positions_by_value, shared_brokers, unique, wait_committed_to_end, wait_records,
};

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
    mirror_end_to_end(&brokers, &input, &output, 100_000, false).await;
}

/// A mirror job's world on a real broker: input and output topics, a group, a job file,
/// and a producer streaming into the input at a steady rate so that jobs can be
/// disturbed mid-stream.
struct Scenario {
    brokers: String,
    input: String,
    output: String,
    group: String,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    producer: Option<StreamProducer>,
    count: u64,
}

impl Scenario {
    async fn start(brokers: &str, partitions: i32, count: u64, per_sec: u64) -> Self {
        let (input, output) = topics(brokers, partitions).await;
        let group = unique("group");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = mirror_config(dir.path(), brokers, &group, &input, &output, "");
        let producer = Some(StreamProducer::start(brokers, &input, count, per_sec));
        Self {
            brokers: brokers.to_owned(),
            input,
            output,
            group,
            dir,
            config,
            producer,
            count,
        }
    }

    fn job(&self, name: &str) -> JobProcess {
        JobProcess::mirror(&self.config, self.dir.path(), name)
    }

    fn wait_output(&self, records: i64) {
        wait_records(
            &self.brokers,
            &self.output,
            records,
            Duration::from_secs(90),
        );
    }

    /// Waits for the producer, then for the group to commit the end of the input.
    fn wait_done(&mut self, diag: impl Fn() -> String) {
        if let Some(p) = self.producer.take() {
            assert_eq!(p.finish(), self.count);
        }
        let timeout = Duration::from_secs(180);
        wait_committed_to_end(&self.brokers, &self.group, &self.input, timeout, diag);
    }

    fn check_complete(&self) -> usize {
        check_complete(&self.brokers, &self.input, &self.output)
    }
}

/// SIGTERM, and the process must exit 0.
fn stop(job: &mut JobProcess) {
    job.signal("TERM");
    let status = job.wait(Duration::from_secs(60));
    assert!(status.success(), "exit {status:?}: {}", job.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_mid_stream_and_restarted_loses_nothing() {
    let mut s = Scenario::start(&shared_brokers(), 3, 30_000, 4_000).await;
    let mut job = s.job("first");
    s.wait_output(5_000);
    job.kill();
    // Killed mid-stream: the producer is still writing.
    let mut job = s.job("second");
    s.wait_done(|| job.log_tail());
    stop(&mut job);
    let dups = s.check_complete();
    eprintln!("crash test: {dups} duplicates after SIGKILL (allowed)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaving_mid_stream_hands_its_partitions_over_without_loss() {
    let mut s = Scenario::start(&shared_brokers(), 6, 36_000, 3_000).await;
    let mut a = s.job("a");
    let mut b = s.job("b");
    s.wait_output(9_000);
    stop(&mut a);
    s.wait_done(|| format!("a:\n{}\nb:\n{}", a.log_tail(), b.log_tail()));
    stop(&mut b);
    let dups = s.check_complete();
    eprintln!("rebalance test: {dups} duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_exits_zero_and_commits_exactly_what_was_delivered() {
    let s = Scenario::start(&shared_brokers(), 3, 30_000, 4_000).await;
    let mut job = s.job("job");
    s.wait_output(6_000);
    stop(&mut job);

    let committed = topic_io::committed(&s.brokers, &s.group, &s.input).expect("committed");
    let seen = read_positions(&s.brokers, &s.input, &s.output);
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
    let mut s = Scenario::start(&tansu.brokers.clone(), 3, 16_000, 2_000).await;
    let mut job = s.job("job");
    s.wait_output(2_000);
    // Down mid-stream, for longer than a few reconnect attempts.
    tansu.stop();
    std::thread::sleep(Duration::from_secs(3));
    tansu.restart();
    s.wait_done(|| job.log_tail());
    stop(&mut job);
    let dups = s.check_complete();
    eprintln!("broker restart: {dups} duplicates");
}

/// A job told to stop while its broker is gone still stops: its last commit and its
/// leaving the group each wait for the missing coordinator for a bounded time (it used
/// to wait forever in librdkafka's synchronous commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_gone_still_exits() {
    let mut tansu = Tansu::start();
    let mut s = Scenario::start(&tansu.brokers.clone(), 3, 2_000, 4_000).await;
    let mut job = s.job("job");
    s.wait_output(2_000);
    if let Some(p) = s.producer.take() {
        assert_eq!(p.finish(), s.count);
    }
    tansu.stop();
    // Long enough for the client to have lost its group coordinator.
    std::thread::sleep(Duration::from_secs(5));
    job.signal("TERM");
    let status = job.wait(Duration::from_secs(120));
    assert!(status.success(), "exit {status:?}: {}", job.log_tail());
    // The whole log: librdkafka's reconnect errors fill its tail.
    let log = std::fs::read_to_string(s.dir.path().join("job.log")).unwrap_or_default();
    assert!(
        log.contains("offset commit failed"),
        "the commit that could not happen is named: {}",
        job.log_tail()
    );
}

/// The mock cluster creates topics on demand, so this one needs a broker that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_output_topic_is_named_at_start() {
    let brokers = shared_brokers();
    let (input, _) = topics(&brokers, 1).await;
    let typo = unique("fleet.typo");
    let mut f = eventbus_jobs::config::JobFile::parse(&format!(
        "[source]\ngroup_id = \"g\"\ntopics = [\"{input}\"]\n[mirror]\noutput = \"{typo}\"\n"
    ))
    .expect("job file");
    f.kafka.set("bootstrap.servers", brokers);
    let err = tokio::task::spawn_blocking(move || eventbus_jobs::mirror::job(&f).err())
        .await
        .expect("join")
        .expect("a missing output topic fails");
    assert!(format!("{err:#}").contains(&typo), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_apply_creates_the_catalog_idempotently_alters_configs_and_refuses_a_decrease() {
    use eventbus_jobs::topics_cmd::{Change, plan};
    let brokers = shared_brokers();
    let schemas = eventbus_schemas::bundled_dir();
    let catalog_path = schemas.join("topics.toml");
    let run = |catalog: &std::path::Path| {
        std::process::Command::new(eventbus_tests::eventbus_bin())
            .args([
                "topics",
                "apply",
                "--replication-factor",
                "1",
                "--brokers",
                &brokers,
                "--catalog",
            ])
            .arg(catalog)
            .output()
            .expect("run eventbus")
    };
    let first = run(&catalog_path);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    // Every seed topic exists with the catalog's partitions, retention and cleanup policy.
    let catalog = eventbus_schemas::Catalog::load(&catalog_path).expect("catalog");
    // So do each one's dead-letter and parked topics, with the source's partitions.
    for t in &catalog.topics {
        for name in [
            t.name.clone(),
            t.dlq_topic(),
            format!("{}.parked", t.dlq_topic()),
        ] {
            assert_eq!(
                topic_io::partitions(&brokers, &name).expect("exists"),
                t.partitions,
                "{name}"
            );
        }
    }
    assert_eq!(
        plan(&brokers, &catalog, Some(1)).await.expect("plan"),
        Vec::<Change>::new()
    );

    let second = run(&catalog_path);
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("no changes"));

    // A partition decrease is refused, naming the topic; a retention change is planned.
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(&catalog_path).expect("read");
    let fewer = dir.path().join("fewer.toml");
    std::fs::write(
        &fewer,
        text.replacen("partitions = 5\n", "partitions = 3\n", 1),
    )
    .expect("write");
    let refused = run(&fewer);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("safety.emergency.v1") && err.contains("5 -> 3"),
        "{err}"
    );
    assert_eq!(
        topic_io::partitions(&brokers, "safety.emergency.v1").expect("exists"),
        5
    );

    // A partition increase goes through CreatePartitions, which tansu refuses: the error
    // names the topic and nothing else changes.
    let more = dir.path().join("more.toml");
    std::fs::write(
        &more,
        text.replacen("partitions = 5\n", "partitions = 6\n", 1),
    )
    .expect("write");
    let grow = run(&more);
    assert!(!grow.status.success());
    let err = String::from_utf8_lossy(&grow.stderr);
    assert!(
        err.contains("safety.emergency.v1") && err.contains("CreatePartitions"),
        "{err}"
    );

    // A retention change is planned, applied, and touches nothing else.
    let shorter_text = text.replacen("retention_ms = 86400000 ", "retention_ms = 3600000 ", 1);
    let shorter = eventbus_schemas::Catalog::parse(&shorter_text, schemas).expect("catalog");
    let changes = plan(&brokers, &shorter, Some(1)).await.expect("plan");
    let to_short = Change::AlterConfig {
        topic: "telemetry.raw.v1".into(),
        key: "retention.ms".into(),
        from: Some("86400000".into()),
        to: "3600000".into(),
    };
    assert_eq!(changes, vec![to_short]);
    let shorter_path = dir.path().join("shorter.toml");
    std::fs::write(&shorter_path, &shorter_text).expect("write");
    let applied = run(&shorter_path);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert_eq!(
        plan(&brokers, &shorter, Some(1)).await.expect("plan"),
        Vec::<Change>::new()
    );
    // Against the original catalog only the retention differs: cleanup.policy and the
    // other topics were left as they were.
    assert_eq!(
        plan(&brokers, &catalog, Some(1)).await.expect("plan"),
        vec![Change::AlterConfig {
            topic: "telemetry.raw.v1".into(),
            key: "retention.ms".into(),
            from: Some("3600000".into()),
            to: "86400000".into(),
        }]
    );
    assert!(run(&catalog_path).status.success());
    assert_eq!(
        plan(&brokers, &catalog, Some(1)).await.expect("plan"),
        Vec::<Change>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_apply_refuses_more_replicas_than_brokers_before_creating_anything() {
    let brokers = shared_brokers();
    let text =
        std::fs::read_to_string(eventbus_schemas::bundled_dir().join("topics.toml")).expect("read");
    // A topic this cluster does not have, at the catalog's replication factor of 3: the
    // single test broker cannot hold three replicas.
    let fresh = format!("safety.emergency.v{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = dir.path().join("topics.toml");
    std::fs::write(
        &catalog,
        text.replacen(
            "name = \"safety.emergency.v1\"",
            &format!("name = \"{fresh}\""),
            1,
        )
        .replacen(
            "dlq = \"safety.emergency.v1.dlq\"",
            &format!("dlq = \"{fresh}.dlq\""),
            1,
        ),
    )
    .expect("write");
    let topics = |command: &str| {
        std::process::Command::new(eventbus_tests::eventbus_bin())
            .args(["topics", command, "--brokers", &brokers, "--catalog"])
            .arg(&catalog)
            .output()
            .expect("run eventbus")
    };
    // The plan says so already.
    let plan = topics("plan");
    assert!(plan.status.success());
    let said = String::from_utf8_lossy(&plan.stdout);
    assert!(
        said.contains("apply would refuse")
            && said.contains(&format!("! create {fresh}: replication factor 3")),
        "{said}"
    );
    let out = topics("apply");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&fresh)
            && err.contains("replication factor 3")
            && err.contains("--replication-factor 1"),
        "{err}"
    );
    // Refused before anything was created: neither the topic nor its dead-letter topics.
    for name in [
        fresh.clone(),
        format!("{fresh}.dlq"),
        format!("{fresh}.dlq.parked"),
    ] {
        assert!(
            topic_io::partitions(&brokers, &name).is_err(),
            "{name} was created"
        );
    }
}

/// On a broker of its own, which has none of the catalog's topics (tansu, like a
/// production cluster, creates none on demand; the mock cluster would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_to_a_missing_topic_names_it_and_the_command_that_creates_it() {
    let tansu = Tansu::start();
    let catalog = eventbus_schemas::bundled_dir().join("topics.toml");
    let opts = eventbus_jobs::generate::GenerateOptions {
        topic: "fleet.operations.v1".into(),
        count: 10,
        rate: 0,
        seed: 3,
        disorder_ms: 0,
        quiet: true,
    };
    let brokers = tansu.brokers.clone();
    let started = std::time::Instant::now();
    let err = tokio::task::spawn_blocking(move || {
        eventbus_jobs::generate::run(&brokers, &catalog, &opts)
    })
    .await
    .expect("join")
    .expect_err("the topic does not exist");
    let text = format!("{err:#}");
    assert!(
        text.contains("fleet.operations.v1") && text.contains("eventbus topics apply"),
        "{text}"
    );
    // Said at once, not after the producer's message timeout.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(topic_io::partitions(&tansu.brokers, "fleet.operations.v1").is_err());
}
