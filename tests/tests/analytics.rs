//! The analytics job against the real broker (tansu): SIGKILLs at random moments, two
//! members with one killed, and late records. The output is read back by Python's
//! confluent-kafka and fastavro, deduplicated by (fleet_id, minute) keeping the last, and
//! compared with a GROUP BY that DuckDB computes over the produced input
//! (`tests/python/fleet_minute_check.py`). `make test` starts tansu.
#![cfg(feature = "real-broker")]
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use eventbus_jobs::topic_io;
use eventbus_tests::{JobProcess, eventbus_bin, run_python, shared_brokers, unique, wait_records};
use rand::Rng;

const CHECK: &str = include_str!("../python/fleet_minute_check.py");

/// Topics of one test, a job file naming them, and a folder for logs.
struct Fixture {
    input: String,
    output: String,
    dir: tempfile::TempDir,
    cfg: PathBuf,
}

impl Fixture {
    /// Creates the four topics and produces `count` vehicle states whose event times are
    /// moved back by up to `disorder_ms` within each vehicle.
    async fn new(partitions: i32, count: usize, disorder_ms: u64) -> Self {
        let brokers = shared_brokers();
        let (input, output) = (unique("an_in"), unique("an_out"));
        let (partials, progress) = (unique("an_partials"), unique("an_progress"));
        topic_io::create_topics(
            &brokers,
            &[
                (&input, partitions),
                (&output, 4),
                (&partials, 4),
                (&progress, 4),
                (&format!("{input}.dlq"), 1),
                (&format!("{input}.late"), 1),
            ],
        )
        .await
        .expect("create topics");
        let (id, schema) = eventbus_tests::vehicle_state_schema();
        let decoder = eventbus_schemas::Decoder::new(std::sync::Arc::new(
            eventbus_schemas::FileRegistry::embedded().expect("registry"),
        ));
        // The generator's clock moves 20 ms per event on average; 60 ms more per event
        // spreads 200,000 events over about four and a half hours of event time,
        // without adding disorder (each event moves later than the one before it).
        let records: Vec<(String, Vec<u8>)> = eventbus_jobs::generate::records_with_disorder(
            "vehicle.state.v1",
            11,
            id,
            &schema,
            disorder_ms,
        )
        .expect("generator")
        .take(count)
        .enumerate()
        .map(|(i, r)| {
            let (key, bytes) = r.expect("encode");
            let mut v: eventbus_schemas::events::VehicleState =
                decoder.decode_typed(&bytes, None).expect("decode");
            v.event_time += i64::try_from(i).expect("index") * 60;
            (
                key,
                eventbus_schemas::encode(id, &schema, &v).expect("encode"),
            )
        })
        .collect();
        let (b, t) = (brokers.clone(), input.clone());
        let produced =
            tokio::task::spawn_blocking(move || topic_io::produce(&b, &t, records, |_| {}))
                .await
                .expect("join")
                .expect("produce");
        assert_eq!(produced, count as u64);
        let dir = tempfile::tempdir().expect("tempdir");
        let group = unique("an_g");
        let cfg = dir.path().join(format!("{group}.toml"));
        std::fs::write(
            &cfg,
            format!(
                r#"
[kafka]
"bootstrap.servers" = "{brokers}"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"max.poll.interval.ms" = "20000"
[source]
group_id = "{group}"
topics = []
[analytics]
input = "{input}"
output = "{output}"
partials = "{partials}"
progress = "{progress}"
late_topic = "{input}.late"
[dlq.topics]
"{input}" = "{input}.dlq"
"#
            ),
        )
        .expect("write config");
        Self {
            input,
            output,
            dir,
            cfg,
        }
    }

    fn logs(&self) -> &Path {
        self.dir.path()
    }

    /// The independent check: prints its summary, fails the test on any mismatch.
    fn check(&self) -> serde_json::Value {
        let schemas = eventbus_schemas::bundled_dir();
        let out = run_python(
            CHECK,
            &[
                shared_brokers().as_str(),
                self.input.as_str(),
                self.output.as_str(),
                schemas.to_str().expect("utf-8 path"),
            ],
        );
        eprintln!("fleet-minute check: {out}");
        serde_json::from_str(&out).expect("json")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_five_times_then_the_output_equals_a_group_by_over_the_input() {
    let fx = Fixture::new(12, 200_000, 2_000).await;
    let (cfg, logs, output) = (fx.cfg.clone(), fx.logs().to_owned(), fx.output.clone());
    tokio::task::spawn_blocking(move || {
        let mut rng = rand::rng();
        for n in 0..5 {
            let mut job = JobProcess::run("analytics", &cfg, &logs, &format!("run{n}"), &[]);
            // Both stages joined their groups (after the killed member's session ran
            // out), then a random moment of work.
            job.wait_log("partitions assigned", 2, Duration::from_secs(90));
            if n == 0 {
                // The first run is killed only once it has emitted something, so the
                // final run starts mid-way whatever the machine's load.
                wait_records(&shared_brokers(), &output, 1, Duration::from_secs(90));
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(500..4_000)));
            assert!(
                job.exited().is_none(),
                "the job stopped:\n{}",
                job.log_tail()
            );
            job.kill();
        }
        // The killed runs did part of the work: the final run starts mid-way.
        let before = topic_io::available(&shared_brokers(), &output).expect("output size");
        eprintln!("fleet-minutes emitted before the final run: {before}");
        assert!(before > 0, "the killed runs emitted nothing");
        JobProcess::finish("analytics", &cfg, &logs, "final");
    })
    .await
    .expect("join");
    let summary = fx.check();
    assert_eq!(summary["input"], 200_000);
    assert_eq!(summary["mismatches"], 0, "{summary}");
    assert!(
        summary["fleet_minutes"].as_u64().unwrap() > 100,
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_one_killed_mid_run_give_the_same_exact_result() {
    let fx = Fixture::new(6, 60_000, 2_000).await;
    let (cfg, logs, output) = (fx.cfg.clone(), fx.logs().to_owned(), fx.output.clone());
    tokio::task::spawn_blocking(move || {
        let mut a = JobProcess::run("analytics", &cfg, &logs, "a", &[]);
        let mut b = JobProcess::run("analytics", &cfg, &logs, "b", &[]);
        // Both members have partitions of both stages, then a does some work.
        a.wait_log("partitions assigned", 2, Duration::from_secs(90));
        b.wait_log("partitions assigned", 2, Duration::from_secs(90));
        std::thread::sleep(Duration::from_millis(1_500));
        a.kill();
        // b takes a's partitions after the session timeout and goes on with them, until
        // the output has its first fleet-minute (on a loaded machine that can take
        // longer than a fixed wait), so that the final run starts mid-way.
        std::thread::sleep(Duration::from_secs(15));
        wait_records(&shared_brokers(), &output, 1, Duration::from_secs(120));
        assert!(b.exited().is_none(), "b stopped:\n{}", b.log_tail());
        b.signal("TERM");
        let status = b.wait(Duration::from_secs(60));
        assert!(status.success(), "{}", b.log_tail());
        let before = topic_io::available(&shared_brokers(), &output).expect("output size");
        eprintln!("fleet-minutes emitted before the final run: {before}");
        assert!(before > 0, "the two members emitted nothing");
        JobProcess::finish("analytics", &cfg, &logs, "final");
    })
    .await
    .expect("join");
    let summary = fx.check();
    assert_eq!(summary["input"], 60_000);
    assert_eq!(summary["mismatches"], 0, "{summary}");
}

/// Records far behind their partition's watermark are counted as late, not dropped
/// silently and not added to a window that was already emitted: the job's closing log
/// line says how many, and they are in the side output. Foreign bytes at the end of the
/// input go to the DLQ without stopping the batch run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_beyond_the_allowance_are_counted() {
    let fx = Fixture::new(1, 3_000, 0).await;
    // 37 more records, each an hour behind the latest event time of the partition.
    let (id, schema) = eventbus_tests::vehicle_state_schema();
    let late: Vec<(String, Vec<u8>)> =
        eventbus_jobs::generate::records("vehicle.state.v1", 5, id, &schema)
            .expect("generator")
            .take(37)
            .map(|r| {
                let (key, bytes) = r.expect("encode");
                let mut v: eventbus_schemas::events::VehicleState =
                    eventbus_schemas::Decoder::new(std::sync::Arc::new(
                        eventbus_schemas::FileRegistry::embedded().expect("registry"),
                    ))
                    .decode_typed(&bytes, None)
                    .expect("decode");
                v.event_time -= 3_600_000;
                (
                    key,
                    eventbus_schemas::encode(id, &schema, &v).expect("encode"),
                )
            })
            .collect();
    // And four records no producer of ours writes: they go to the DLQ, and the partition
    // goes on. Not Avro; a forged body; an empty one (what a tombstone becomes); and a
    // real record cut short, which the first stage's own decoder reads (its writer id
    // is the committed schema's).
    let mut late = late;
    let cut = late[0].1[..late[0].1.len() - 3].to_vec();
    late.push(("veh-x".to_owned(), b"not avro at all".to_vec()));
    late.push(("veh-y".to_owned(), vec![0, 0, 0, 0, 1, 0xff, 0xff]));
    late.push(("veh-z".to_owned(), Vec::new()));
    late.push(("veh-w".to_owned(), cut));
    let (b, t) = (shared_brokers(), fx.input.clone());
    tokio::task::spawn_blocking(move || topic_io::produce(&b, &t, late, |_| {}))
        .await
        .expect("join")
        .expect("produce");
    let out = std::process::Command::new(eventbus_bin())
        .args(["run", "analytics", "--until-caught-up", "--config"])
        .arg(&fx.cfg)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .args(["--log-format", "json"])
        .output()
        .expect("run");
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
    let finished = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "analytics job finished")
        .unwrap_or_else(|| panic!("no closing line in:\n{log}"));
    assert_eq!(finished["fields"]["late"], 37, "{finished}");
    assert_eq!(finished["fields"]["consumed"], 3_041, "{finished}");
    let dlq = format!("{}.dlq", fx.input);
    assert_eq!(
        topic_io::available(&shared_brokers(), &dlq).expect("dlq"),
        4,
        "the four foreign records are dead-lettered"
    );
    // ... and each is in the side output.
    let late_topic = format!("{}.late", fx.input);
    let late_out = topic_io::available(&shared_brokers(), &late_topic).expect("late topic");
    assert_eq!(late_out, 37);
}
