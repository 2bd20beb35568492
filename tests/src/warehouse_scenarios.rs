//! Warehouse scenarios run on the mock cluster and on the real broker (tansu), and the
//! job-file helpers the warehouse tests share.

use std::time::Duration;

use eventbus_jobs::config::JobFile;
use eventbus_jobs::topic_io;

use crate::dlq::{Mock, create_topics};
use crate::unique;

/// A warehouse job over `topic` into `root`, in batch mode, with `extra` job-file lines.
pub fn warehouse_file(
    brokers: &str,
    group: &str,
    topic: &str,
    root: &std::path::Path,
    extra: &str,
) -> JobFile {
    let mut file = JobFile::parse(&format!(
        "[source]\ngroup_id = \"{group}\"\ntopics = [\"{topic}\"]\ncommit_interval_ms = 100\n\
         [warehouse]\ntable_root = \"{}\"\n{extra}",
        root.display()
    ))
    .expect("job file");
    file.kafka.set("bootstrap.servers", brokers);
    file
}

/// Asserts that `group` has committed every partition of `topic` to its end offset.
pub fn assert_committed_to_end(
    brokers: &str,
    group: &str,
    topic: &str,
    ends: &std::collections::BTreeMap<i32, i64>,
) {
    let committed = topic_io::committed(brokers, group, topic).expect("committed");
    for (p, end) in ends {
        assert_eq!(
            committed.get(p),
            Some(end),
            "partition {p} committed to its end"
        );
    }
}

/// Runs the warehouse job of `file` in batch mode; fails the test if it has not returned
/// within `secs`.
pub async fn run_batch(file: &JobFile, secs: u64) -> anyhow::Result<eventbus_runtime::JobReport> {
    let job = eventbus_jobs::warehouse::job(file, &batch_mode()).expect("job");
    tokio::time::timeout(Duration::from_secs(secs), job.run(std::future::pending()))
        .await
        .unwrap_or_else(|_| panic!("the warehouse job did not return within {secs} s"))
}

pub fn batch_mode() -> eventbus_jobs::warehouse::WarehouseArgs {
    eventbus_jobs::warehouse::WarehouseArgs {
        until_caught_up: true,
        ..Default::default()
    }
}

/// The warehouse decodes with a Confluent-API registry's schemas; a registry that cannot
/// answer stops it with nothing dead-lettered and nothing committed past the table; run
/// again with the registry back, the table is every record once.
pub async fn registry_outage_stops_the_warehouse_and_a_restart_finishes(
    mock: Mock<'_>,
    brokers: &str,
) {
    use crate::registry::RegistryDouble;
    let topic = unique("wh-registry");
    let dlq = format!("{topic}.dlq");
    create_topics(mock, brokers, &[(&topic, 3), (&dlq, 1)]).await;

    // The registry's ids (101, 102) mean other schemas in the file registry, or none:
    // only a job that asks this registry can decode the records. 102 is VehicleState with
    // a doc: another text, the same encoding.
    let registry = RegistryDouble::start("Basic b3BzOnNlY3JldA==", 100);
    let text = crate::vehicle_state_json();
    let mut doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    doc["doc"] = "VehicleState, registered again".into();
    let client = registry.client("ops", "secret");
    assert_eq!(client.register("a-value", &text).expect("register"), 101);
    assert_eq!(
        client
            .register("b-value", &doc.to_string())
            .expect("register"),
        102
    );
    // Per partition, the records with id 101 come before those with id 102.
    for (id, seed) in [(101, 1), (102, 2)] {
        let records = crate::vehicle_states(seed, id, 300);
        topic_io::produce(brokers, &topic, records, |_| {}).expect("produce");
    }
    let ends = topic_io::end_offsets(brokers, &topic).expect("ends");
    assert_eq!(ends.values().sum::<i64>(), 600);

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("tables");
    let group = unique("g");
    let registry_lines = format!(
        "[registry]\nurl = \"{}\"\nuser = \"ops\"\npassword = \"secret\"\n",
        registry.url
    );
    let mut file = warehouse_file(brokers, &group, &topic, &root, &registry_lines);
    // The second run joins the same group: the mock cluster frees the stopped member's
    // partitions only after its session times out.
    file.kafka.set("session.timeout.ms", "6000");

    // The registry cannot answer for 102: that says nothing about the records, so none is
    // dead-lettered; the job stops naming the registry, committing nothing past them.
    registry.failing.lock().unwrap().insert(102);
    let err = run_batch(&file, 120)
        .await
        .expect_err("an unreachable registry stops the job");
    let store = object_store::local::LocalFileSystem::new_with_prefix(&root).expect("store");
    let text = format!("{err:#}");
    assert!(
        text.contains(&registry.url) && text.contains("102"),
        "{text}"
    );
    assert!(
        crate::dlq::read_letters(brokers, &dlq).is_empty(),
        "nothing dead-lettered"
    );
    let rows = crate::read_table(&store, &topic.as_str().into()).await;
    let in_table: std::collections::BTreeSet<_> =
        rows.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(in_table.len(), rows.len(), "no row twice");
    let committed = topic_io::committed(brokers, &group, &topic).expect("committed");
    for (p, c) in &committed {
        // Every committed offset is in the table: nothing is committed that is not.
        assert!(
            (0..*c).all(|o| in_table.contains(&(*p, o))),
            "partition {p} committed to {c} past what the table holds"
        );
    }

    // The registry is back: the same job picks up where the table ends, and the table is
    // every record once, read with the registry's schemas.
    registry.failing.lock().unwrap().clear();
    run_batch(&file, 120).await.expect("clean exit");
    let rows = crate::read_table(&store, &topic.as_str().into()).await;
    assert_eq!(crate::table_duplicates(&rows), (0, 600));
    assert!(
        crate::dlq::read_letters(brokers, &dlq).is_empty(),
        "nothing dead-lettered"
    );
    assert_committed_to_end(brokers, &group, &topic, &ends);
    let lookups = registry.lookups.lock().unwrap().clone();
    assert!(
        lookups.contains_key(&101) && lookups.contains_key(&102),
        "{lookups:?}"
    );
}

/// Batch mode stops with the group committed to the end even when the table is ahead
/// of the group (as after a run killed between publishing and committing), and stops at
/// once for a group already at the end.
pub async fn batch_mode_commits_to_the_end_even_when_the_table_is_ahead(
    mock: Mock<'_>,
    brokers: &str,
) {
    let topic = unique("wh-batch");
    create_topics(mock, brokers, &[(&topic, 3), (&format!("{topic}.dlq"), 1)]).await;
    let records = crate::vehicle_states(3, crate::vehicle_state_schema().0, 1_500);
    topic_io::produce(brokers, &topic, records, |_| {}).expect("produce");
    let ends = topic_io::end_offsets(brokers, &topic).expect("ends");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("tables");
    let run = |group: &str| {
        let file = warehouse_file(brokers, group, &topic, &root, "");
        async move { run_batch(&file, 120).await.expect("clean exit") }
    };

    let first = unique("g");
    assert_eq!(run(&first).await.consumed, 1_500);
    assert_committed_to_end(brokers, &first, &topic, &ends);

    // A group that has committed nothing, over a table that already holds everything
    // (as after a run killed between publishing and committing): the run reads each
    // record, writes none again, and leaves its group at the end.
    let second = unique("g");
    assert_eq!(run(&second).await.consumed, 1_500);
    assert_committed_to_end(brokers, &second, &topic, &ends);
    let store = object_store::local::LocalFileSystem::new_with_prefix(&root).expect("store");
    let rows = crate::read_table(&store, &topic.as_str().into()).await;
    assert_eq!(crate::table_duplicates(&rows), (0, 1_500));

    // A group already at the end has nothing to read, and the run stops at once.
    assert_eq!(run(&first).await.consumed, 0);
}
