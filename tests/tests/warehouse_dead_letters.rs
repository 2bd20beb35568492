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

/// A (partition, offset).
type Position = (i32, i64);

/// Where each produced record landed: the positions of those whose key is in `bad`, with
/// the key, and the positions of all others.
fn positions(
    produced: &[rdkafka::message::OwnedMessage],
    bad: &std::collections::BTreeSet<String>,
) -> (
    std::collections::BTreeMap<Position, String>,
    std::collections::BTreeSet<Position>,
) {
    use rdkafka::Message;
    let mut bad_at = std::collections::BTreeMap::new();
    let mut good_at = std::collections::BTreeSet::new();
    for m in produced {
        let key = String::from_utf8_lossy(m.key().expect("key")).into_owned();
        if bad.contains(&key) {
            bad_at.insert((m.partition(), m.offset()), key);
        } else {
            good_at.insert((m.partition(), m.offset()));
        }
    }
    (bad_at, good_at)
}

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
    let (bad_at, good_at) = positions(&produced, &undecodable);
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

/// The values a producer in another language might send that arrow-avro, on its own,
/// would take and then fail a whole file on at flush, or read into the next record:
/// one test per known cause. Each loads a topic where every 25th record is bad, with
/// one warehouse run to the end, and checks that every good record is in the table
/// exactly once, every bad one in the DLQ with a reason, and that the run exits 0.
mod malformed {
    use super::*;
    use eventbus_schemas::events::VehicleStatus;
    use eventbus_tests::dlq::read_letters;

    /// A good framed value, and the index of its `status` enum in it.
    struct Good {
        bytes: Vec<u8>,
        status_at: usize,
    }

    fn good_values(n: usize) -> Vec<Good> {
        let (id, schema) = eventbus_tests::vehicle_state_schema();
        eventbus_schemas::fleet::FleetGenerator::new(20, 3)
            .take(n)
            .map(|mut event| {
                event.status = VehicleStatus::Driving;
                let driving = eventbus_schemas::encode(id, &schema, &event).expect("encode");
                event.status = VehicleStatus::Idle;
                let idle = eventbus_schemas::encode(id, &schema, &event).expect("encode");
                let differ: Vec<usize> = (0..driving.len())
                    .filter(|&i| driving[i] != idle[i])
                    .collect();
                assert_eq!(differ.len(), 1, "one byte holds the status");
                Good {
                    bytes: driving,
                    status_at: differ[0],
                }
            })
            .collect()
    }

    async fn bad_records_go_to_the_dlq_and_the_rest_loads_once(
        cause: &'static str,
        bad: fn(&Good, &Good, usize) -> Vec<u8>,
    ) {
        let brokers = shared_brokers();
        let topic = unique(&format!("wh-{cause}"));
        let dlq = format!("{topic}.dlq");
        topic_io::create_topics(&brokers, &[(&topic, 2), (&dlq, 1)])
            .await
            .expect("create topics");
        let goods = good_values(1_000);
        let mut records = Vec::new();
        let mut bad_keys = std::collections::BTreeSet::new();
        for (i, g) in goods.iter().enumerate() {
            let key = format!("k{i}");
            if i % 25 == 24 {
                records.push((key.clone(), bad(g, &goods[i - 1], i / 25)));
                bad_keys.insert(key);
            } else {
                records.push((key, g.bytes.clone()));
            }
        }
        let produced = eventbus_tests::produce_and_read_back(&brokers, &topic, records, READ).await;
        let (bad_at, good_at) = positions(&produced, &bad_keys);
        assert_eq!(bad_at.len(), 40);

        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("tables");
        let cfg = dir.path().join("job.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"
[kafka]
"bootstrap.servers" = "{brokers}"
"session.timeout.ms" = "6000"
[source]
group_id = "{}"
topics = ["{topic}"]
commit_interval_ms = 200
[warehouse]
table_root = "{}"
roll_rows = 400
max_age_ms = 500
"#,
                unique("g"),
                root.display()
            ),
        )
        .expect("write config");
        let logs = dir.path().to_owned();
        // Exits 0 with --until-caught-up, or the helper fails the test.
        tokio::task::spawn_blocking(move || JobProcess::finish_warehouse(&cfg, &logs, cause))
            .await
            .expect("join");

        let store = object_store::local::LocalFileSystem::new_with_prefix(&root).expect("store");
        let rows = read_table(&store, &StorePath::from(topic.as_str())).await;
        assert_eq!(
            table_duplicates(&rows),
            (0, good_at.len()),
            "{cause}: rows written twice or missing"
        );
        let written: std::collections::BTreeSet<_> =
            rows.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(written, good_at, "{cause}: the table is every good record");

        let letters = tokio::task::spawn_blocking(move || read_letters(&brokers, &dlq))
            .await
            .expect("join");
        let mut quarantined = std::collections::BTreeSet::new();
        for l in &letters {
            let at = (
                l.context.partition.expect("partition"),
                l.context.offset.expect("offset"),
            );
            assert_eq!(
                bad_at.get(&at),
                Some(&l.key),
                "{cause}: the letter for {at:?}"
            );
            let reason = l.context.message.as_deref().unwrap_or_default();
            assert!(
                reason.contains("does not match schema id"),
                "{cause}: the letter for {at:?} says why: {reason:?}"
            );
            quarantined.insert(at);
        }
        assert_eq!(
            quarantined.len(),
            bad_at.len(),
            "{cause}: every bad record is in the DLQ"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_enum_index_out_of_range() {
        bad_records_go_to_the_dlq_and_the_rest_loads_once("enum", |g, _, n| {
            let mut v = g.bytes.clone();
            // Zig-zag: 5 symbols, so 2 * 5 is index 5, the first out of range.
            v[g.status_at] = [10, 62, 0x7e][n % 3];
            v
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_framed_values_in_one_record() {
        bad_records_go_to_the_dlq_and_the_rest_loads_once("concatenated", |g, prev, _| {
            [g.bytes.as_slice(), prev.bytes.as_slice()].concat()
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trailing_bytes() {
        bad_records_go_to_the_dlq_and_the_rest_loads_once("trailing", |g, _, n| {
            let tail: &[u8] = match n % 3 {
                // Another frame's header, as if a second value had been cut off.
                0 => &g.bytes[..5],
                1 => &[0],
                _ => &[0xde, 0xad],
            };
            [g.bytes.as_slice(), tail].concat()
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_value_cut_short() {
        bad_records_go_to_the_dlq_and_the_rest_loads_once("cut", |g, _, n| {
            // The header alone, one byte of body, or all but the last byte.
            let keep = [5, 6, g.bytes.len() - 1][n % 3];
            g.bytes[..keep].to_vec()
        })
        .await;
    }

    /// Tombstones (a null value, as compacted topics and other clients write them) and
    /// empty values: dead-lettered as not in the wire format, and the rest loads once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tombstones_and_empty_values() {
        use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
        let brokers = shared_brokers();
        let topic = unique("wh-tombstone");
        let dlq = format!("{topic}.dlq");
        topic_io::create_topics(&brokers, &[(&topic, 2), (&dlq, 1)])
            .await
            .expect("create topics");
        let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("producer");
        let mut bad_keys = std::collections::BTreeSet::new();
        for (i, g) in good_values(500).iter().enumerate() {
            let key = format!("k{i}");
            let record = BaseRecord::<str, [u8]>::to(&topic).key(key.as_str());
            let record = match i % 25 {
                24 => record,                  // a tombstone: no value at all
                12 => record.payload(&[][..]), // an empty value
                _ => record.payload(g.bytes.as_slice()),
            };
            if i % 25 == 24 || i % 25 == 12 {
                bad_keys.insert(key.clone());
            }
            producer.send(record).map_err(|(e, _)| e).expect("send");
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
        let produced = topic_io::read_all(&brokers, &topic, READ).expect("read back");
        assert_eq!(produced.len(), 500);
        let (bad_at, good_at) = positions(&produced, &bad_keys);
        assert_eq!(bad_at.len(), 40);

        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("tables");
        let cfg = dir.path().join("job.toml");
        std::fs::write(
            &cfg,
            format!(
                "[kafka]\n\"bootstrap.servers\" = \"{brokers}\"\n\"session.timeout.ms\" = \"6000\"\n\
                 [source]\ngroup_id = \"{}\"\ntopics = [\"{topic}\"]\ncommit_interval_ms = 200\n\
                 [warehouse]\ntable_root = \"{}\"\nmax_age_ms = 500\n",
                unique("g"),
                root.display()
            ),
        )
        .expect("write config");
        let logs = dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            JobProcess::finish_warehouse(&cfg, &logs, "tombstones")
        })
        .await
        .expect("join");
        let store = object_store::local::LocalFileSystem::new_with_prefix(&root).expect("store");
        let rows = read_table(&store, &StorePath::from(topic.as_str())).await;
        assert_eq!(table_duplicates(&rows), (0, good_at.len()));
        let letters = tokio::task::spawn_blocking(move || read_letters(&brokers, &dlq))
            .await
            .expect("join");
        let mut quarantined = std::collections::BTreeSet::new();
        for l in &letters {
            let at = (
                l.context.partition.expect("partition"),
                l.context.offset.expect("offset"),
            );
            assert_eq!(bad_at.get(&at), Some(&l.key), "the letter for {at:?}");
            let reason = l.context.message.as_deref().unwrap_or_default();
            assert!(reason.contains("not in the wire format"), "{reason:?}");
            quarantined.insert(at);
        }
        assert_eq!(quarantined.len(), bad_at.len(), "every one is in the DLQ");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_foreign_bytes() {
        bad_records_go_to_the_dlq_and_the_rest_loads_once("foreign", |g, _, n| {
            let mut v = g.bytes.clone();
            match n % 3 {
                // The uuid event_id's first character, then vehicle_id's: not UTF-8.
                0 => v[6] = 0xff,
                1 => v[6 + 36 + 1] = 0xc3,
                // The status byte as a 10-byte varint: a number longer than 64 bits.
                _ => {
                    let at = g.status_at;
                    v.splice(at..=at, [0xff; 10]);
                }
            }
            v
        })
        .await;
    }
}
