//! The warehouse job on the real broker (tansu) with records it cannot decode: they go
//! to the topic's DLQ with their context, across a SIGKILL, while the table stays exactly
//! once; with a schema registry that goes down; and batch mode's committed offsets. Its
//! own test binary, so `make test` runs it on a fresh tansu (tansu 0.6's group
//! coordinator slows down as groups and killed members pile up).
#![cfg(feature = "real-broker")]
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use eventbus_jobs::topic_io;
use eventbus_tests::{JobProcess, read_table, shared_brokers, table_duplicates, unique};
use object_store::path::Path as StorePath;

const READ: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_cannot_be_decoded_go_to_the_dlq_across_a_crash_and_the_table_stays_exact() {
    use eventbus_tests::dlq::{poison_stream, read_letters};
    let brokers = shared_brokers();
    let topic = unique("wh-poison");
    let dlq = format!("{topic}.dlq");
    topic_io::create_topics(&brokers, &[(&topic, 3), (&dlq, 1)])
        .await
        .expect("create topics");
    // 20,000 records, every 100th poison of five kinds: 120 cannot be decoded (bad
    // bytes, an unknown schema id, a truncated body); 80 are valid Avro.
    let stream = poison_stream(20_000, 100);
    let undecodable: std::collections::BTreeSet<String> = stream
        .poison
        .iter()
        .filter(|(_, kind)| eventbus_tests::dlq::UNDECODABLE.contains(kind))
        .map(|(key, _)| key.clone())
        .collect();
    assert_eq!(undecodable.len(), 120);
    let produced =
        eventbus_tests::produce_and_read_back(&brokers, &topic, stream.records.clone(), READ).await;
    // Where each record landed, and which positions hold undecodable ones.
    let mut bad_at = std::collections::BTreeMap::new();
    let mut good_at = std::collections::BTreeSet::new();
    for m in &produced {
        use rdkafka::Message;
        let key = String::from_utf8_lossy(m.key().expect("key")).into_owned();
        if undecodable.contains(&key) {
            bad_at.insert((m.partition(), m.offset()), key);
        } else {
            good_at.insert((m.partition(), m.offset()));
        }
    }
    assert_eq!(bad_at.len(), 120);

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("tables");
    let group = unique("g");
    let cfg = dir.path().join("job.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[kafka]
"bootstrap.servers" = "{brokers}"
"session.timeout.ms" = "6000"
"max.poll.interval.ms" = "20000"
[source]
group_id = "{group}"
topics = ["{topic}"]
commit_interval_ms = 200
[warehouse]
table_root = "{}"
roll_rows = 3000
max_age_ms = 500
"#,
            root.display()
        ),
    )
    .expect("write config");
    let logs = dir.path().to_owned();
    let (c, l, b, d) = (cfg.clone(), logs.clone(), brokers.clone(), dlq.clone());
    let finished_in = tokio::task::spawn_blocking(move || {
        // Killed mid-run, once its first letters are in the DLQ, then run to the end.
        let mut first = JobProcess::warehouse(&c, &l, "killed", &[]);
        let deadline = Instant::now() + Duration::from_secs(120);
        while topic_io::end_offsets(&b, &d)
            .map(|e| e.values().sum::<i64>())
            .unwrap_or(0)
            == 0
        {
            assert!(
                Instant::now() < deadline,
                "no letter within 120 s:\n{}",
                first.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        first.kill();
        JobProcess::finish_warehouse(&c, &l, "final")
    })
    .await
    .expect("join");

    // The table: every decodable record exactly once, none of the undecodable ones.
    let store = object_store::local::LocalFileSystem::new_with_prefix(&root).expect("store");
    let rows = read_table(&store, &StorePath::from(topic.as_str())).await;
    assert_eq!(
        table_duplicates(&rows),
        (0, good_at.len()),
        "rows written twice or missing"
    );
    let written: std::collections::BTreeSet<_> =
        rows.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(
        written, good_at,
        "the table is every record but the undecodable"
    );
    // The commit log tells a loader the same: what an entry lists as skipped is
    // undecodable offsets inside its range. (Not necessarily all of them: one that the
    // killed run dead-lettered and committed right after its last entry falls inside the
    // next writer's range, which read on from the committed offset and never saw it.) So
    // what an entry leaves out can only come before everything it lists.
    let commits = root.join(&topic).join("_eventbus/commits");
    let mut entries = 0;
    for part in std::fs::read_dir(&commits).expect("commit log") {
        for file in std::fs::read_dir(part.expect("dir").path()).expect("partition log") {
            let entry: eventbus_operators::sinks::parquet::CommitEntry =
                serde_json::from_slice(&std::fs::read(file.expect("entry").path()).expect("read"))
                    .expect("a commit entry");
            let skipped: Vec<i64> = entry.skipped.iter().map(|s| s.offset).collect();
            let bad_inside: Vec<i64> = bad_at
                .range((entry.partition, entry.start_offset)..=(entry.partition, entry.end_offset))
                .map(|((_, o), _)| *o)
                .collect();
            assert!(
                bad_inside.ends_with(&skipped),
                "entry {}/{} lists {skipped:?} as skipped; the undecodable offsets in its range \
                 are {bad_inside:?}",
                entry.partition,
                entry.start_offset
            );
            entries += 1;
        }
    }
    assert!(entries > 0, "no commit entries under {}", commits.display());

    // The DLQ: every undecodable record, byte for byte at its coordinates (a crash may
    // write a letter again: dead letters are at least once), and nothing else.
    let (b, d) = (brokers.clone(), dlq.clone());
    let letters = tokio::task::spawn_blocking(move || read_letters(&b, &d))
        .await
        .expect("join");
    let mut quarantined = std::collections::BTreeSet::new();
    for l in &letters {
        let at = (
            l.context.partition.expect("partition"),
            l.context.offset.expect("offset"),
        );
        assert_eq!(bad_at.get(&at), Some(&l.key), "the letter for {at:?}");
        assert_eq!(l.context.topic.as_deref(), Some(topic.as_str()));
        assert_eq!(l.context.stage.as_deref(), Some("sink:parquet"));
        quarantined.insert(at);
    }
    assert_eq!(
        quarantined.len(),
        120,
        "every undecodable record is in the DLQ"
    );

    // And the group that finished (the job's own, or a fresh one when tansu stranded
    // that) is committed to the end of every partition: batch mode stops only there.
    let g = finished_in.unwrap_or(group);
    let (b, t) = (brokers.clone(), topic.clone());
    let (committed, ends) = tokio::task::spawn_blocking(move || {
        (
            topic_io::committed(&b, &g, &t).expect("committed"),
            topic_io::end_offsets(&b, &t).expect("ends"),
        )
    })
    .await
    .expect("join");
    assert_eq!(committed, ends, "committed to the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_stops_the_warehouse_and_a_restart_finishes() {
    eventbus_tests::warehouse_scenarios::registry_outage_stops_the_warehouse_and_a_restart_finishes(
        None,
        &shared_brokers(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_commits_to_the_end_even_when_the_table_is_ahead() {
    eventbus_tests::warehouse_scenarios::batch_mode_commits_to_the_end_even_when_the_table_is_ahead(
        None,
        &shared_brokers(),
    )
    .await;
}
