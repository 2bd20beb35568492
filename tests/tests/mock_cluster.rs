//! End-to-end tests on librdkafka's in-process mock cluster: fast, no service needed.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use eventbus_jobs::config::JobFile;
use eventbus_jobs::{mirror, topic_io};
use eventbus_runtime::{
    Classify, ErrorClass, KafkaProperties, KafkaSource, RuntimeError, SourceConfig,
};
use eventbus_runtime::{Job, memory::CollectSink};
use eventbus_tests::warehouse_scenarios::{assert_committed_to_end, run_batch, warehouse_file};
use eventbus_tests::{
    GateSink, Running, duplicates, mirror_end_to_end, mirrored_offsets, missing, unique,
};
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
    let (input, output) = (unique("in"), unique("out"));
    cluster.create_topic(&input, 3, 1).expect("topic");
    cluster.create_topic(&output, 3, 1).expect("topic");
    let out = mirror_end_to_end(&brokers, &input, &output, 100_000, true).await;
    // The stamped headers name each record's origin, in order, exactly once.
    let ends = topic_io::end_offsets(&brokers, &input).expect("ends");
    let stamped = mirrored_offsets(&out);
    assert!(missing(&ends, &stamped).is_empty());
    assert_eq!(duplicates(&stamped), 0);
    for (p, offsets) in &stamped {
        assert_eq!(offsets, &(0..ends[p]).collect::<Vec<_>>(), "partition {p}");
    }
}

/// Runs a job that must fail before consuming anything; returns its error, which must
/// come within a bounded time, not after a hang.
async fn start_failure(kafka: KafkaProperties, source: SourceConfig) -> RuntimeError {
    let run = Job::builder("t")
        .source(KafkaSource::new(kafka, source))
        .sink(CollectSink::<bytes::Bytes>::new())
        .build()
        .expect("job")
        .run(std::future::pending());
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("returns in bounded time, not a hang")
        .expect_err("the job must fail")
}

fn brokers(b: &str) -> KafkaProperties {
    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", b);
    kafka
}

#[tokio::test]
async fn unreachable_brokers_fail_fast_with_a_clear_error() {
    let mut source = SourceConfig::new("g", ["vehicle.state.v1"]);
    source.startup_timeout_ms = 2_000;
    let err = start_failure(brokers("127.0.0.1:1"), source).await;
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
    let present = unique("present");
    cluster.create_topic(&present, 1, 1).expect("topic");
    let source = SourceConfig::new("g", [present.as_str(), "fleet.nosuch.v1"]);
    let err = start_failure(brokers(&cluster.bootstrap_servers()), source).await;
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
    let mut kafka = brokers("127.0.0.1:1");
    kafka.set("enable.auto.commit", "true");
    let err = start_failure(kafka, SourceConfig::new("g", ["a.b.v1"])).await;
    assert!(
        err.to_string().contains("kafka.enable.auto.commit"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sink_pauses_the_partitions_and_memory_stays_bounded() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let (input, group) = (unique("in"), unique("group"));
    cluster.create_topic(&input, 2, 1).expect("topic");
    let n = 60_000u64;
    let records = (0..n).map(|i| (format!("k{i}"), vec![b'x'; 100]));
    topic_io::produce(&brokers, &input, records, |_| {}).expect("produce");

    let kafka = self::brokers(&brokers);
    let mut source = SourceConfig::new(group.clone(), [input.as_str()]);
    source.commit_interval_ms = 100;
    let runtime = eventbus_runtime::RuntimeConfig {
        max_in_flight_per_partition: 2_000,
        max_in_flight: 3_000,
        ..Default::default()
    };
    let sink = GateSink::default();
    let job = Job::builder("bounded")
        .config(runtime)
        .source(KafkaSource::new(kafka, source))
        .sink(sink.clone())
        .build()
        .expect("job");
    let running = Running::start(job);
    let stats = running.stats.clone();

    // With the sink stalled, intake stops near the bound: at most one poll batch (capped
    // at the per-partition bound) past it, whatever the backlog of 60k.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.received() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stalled = stats.consumed();
    assert!(stalled > 0, "nothing consumed");
    assert!(
        stalled <= 3_000 + 2 * 2_000,
        "{stalled} records taken in while the sink was stalled"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stats.consumed(), stalled, "intake went on while paused");

    // Once the sink answers again, the partitions resume and everything is delivered.
    sink.open();
    let ends: i64 = topic_io::end_offsets(&brokers, &input)
        .expect("ends")
        .values()
        .sum();
    running.wait_committed(ends, Duration::from_secs(60)).await;
    let report = running.stop().await;
    assert_eq!(report.delivered, n);
    assert_eq!(report.committed_total(), ends);
}

#[tokio::test]
async fn generate_produces_decodable_events_and_counts_them_per_partition() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    cluster
        .create_topic("fleet.operations.v1", 4, 1)
        .expect("topic");
    let catalog = eventbus_schemas::bundled_dir().join("topics.toml");
    let opts = eventbus_jobs::generate::GenerateOptions {
        topic: "fleet.operations.v1".into(),
        count: 2_000,
        rate: 0,
        seed: 3,
        disorder_ms: 0,
        quiet: true,
    };
    let b = brokers.clone();
    let counts =
        tokio::task::spawn_blocking(move || eventbus_jobs::generate::run(&b, &catalog, &opts))
            .await
            .expect("join")
            .expect("generate");
    assert_eq!(counts.values().sum::<u64>(), 2_000);
    let ends = topic_io::end_offsets(&brokers, "fleet.operations.v1").expect("ends");
    for (p, n) in &counts {
        assert_eq!(ends[p], i64::try_from(*n).unwrap(), "partition {p}");
    }
    let decoder = eventbus_schemas::Decoder::new(
        eventbus_schemas::FileRegistry::embedded().expect("registry"),
    );
    let records =
        topic_io::read_all(&brokers, "fleet.operations.v1", Duration::from_secs(60)).expect("read");
    assert_eq!(records.len(), 2_000);
    for m in &records {
        use rdkafka::message::Message;
        let (id, _) = decoder
            .decode(m.payload().unwrap_or_default(), None)
            .expect("decodes");
        assert_eq!(id, 3, "fleet.operations.v1-value is id 3 in registry.toml");
        assert!(m.key().is_some_and(|k| k.starts_with(b"fleet-")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_goes_quiet_is_published_within_the_maximum_age() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let topic = unique("quiet");
    cluster.create_topic(&topic, 2, 1).expect("topic");
    let records = eventbus_tests::vehicle_states(3, eventbus_tests::vehicle_state_schema().0, 37);
    topic_io::produce(&brokers, &topic, records, |_| {}).expect("produce");

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("tables");
    let group = unique("g");
    let mut file = JobFile::parse(&format!(
        "[source]\ngroup_id = \"{group}\"\ntopics = [\"{topic}\"]\ncommit_interval_ms = 100\n\
         [warehouse]\ntable_root = \"{}\"\nmax_age_ms = 1000\n",
        root.display()
    ))
    .expect("job file");
    file.kafka.set("bootstrap.servers", &brokers);
    let job = eventbus_jobs::warehouse::job(&file, &Default::default()).expect("job");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(job.run(async {
        let _ = stop_rx.await;
    }));

    // No more records arrive, and the job keeps running: the files must appear by age.
    let started = Instant::now();
    let rows = loop {
        let store = object_store::local::LocalFileSystem::new_with_prefix(&root);
        if let Ok(store) = store {
            let rows = eventbus_tests::read_table(&store, &topic.as_str().into()).await;
            if rows.len() == 37 {
                break rows;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no file published by age"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(eventbus_tests::table_duplicates(&rows), (0, 37));
    assert!(!running.is_finished(), "published while still running");
    // And the offsets follow the published data while the job runs (the wait blocks
    // this worker; the job runs on the other).
    tokio::task::block_in_place(|| {
        eventbus_tests::wait_committed_to_end(
            &brokers,
            &group,
            &topic,
            Duration::from_secs(30),
            String::new,
        );
    });
    stop_tx.send(()).expect("stop");
    running.await.expect("join").expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warehouse_sends_records_it_cannot_decode_to_the_dlq_and_goes_on() {
    use eventbus_tests::dlq::{poison_stream, read_letters};
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let topic = unique("wh-poison");
    let dlq = format!("{topic}.dlq");
    cluster.create_topic(&topic, 3, 1).expect("topic");
    cluster.create_topic(&dlq, 1, 1).expect("dlq topic");
    // 3,000 records, every 50th poison: 12 each of five kinds. Three kinds cannot be
    // decoded (bad bytes, unknown schema id, a truncated body); the other two are valid
    // Avro and belong in the table.
    let stream = poison_stream(3_000, 50);
    let by_key: std::collections::HashMap<String, Vec<u8>> =
        stream.records.iter().cloned().collect();
    topic_io::produce(&brokers, &topic, stream.records.clone(), |_| {}).expect("produce");
    let undecodable: std::collections::BTreeMap<&String, &str> = stream
        .poison
        .iter()
        .filter(|(_, kind)| eventbus_tests::dlq::UNDECODABLE.contains(kind))
        .map(|(key, kind)| (key, *kind))
        .collect();
    assert_eq!(undecodable.len(), 36);

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("tables");
    let group = unique("g");
    let file = warehouse_file(&brokers, &group, &topic, &root, "");
    let report = run_batch(&file, 120)
        .await
        .expect("the job goes on past the poison and exits cleanly");
    assert_eq!(report.consumed, 3_000);

    // Each undecodable record is in the DLQ once, byte for byte, with its coordinates
    // and a category that says why.
    let letters = read_letters(&brokers, &dlq);
    assert_eq!(letters.len(), 36, "one letter per undecodable record");
    let classifier = eventbus_dlq::Classifier::default();
    let mut quarantined = std::collections::BTreeSet::new();
    for l in &letters {
        let kind = undecodable
            .get(&l.key)
            .unwrap_or_else(|| panic!("{} is not an undecodable record", l.key));
        assert_eq!(
            l.value, by_key[&l.key],
            "{} keeps its original bytes",
            l.key
        );
        let c = &l.context;
        assert_eq!(c.topic.as_deref(), Some(topic.as_str()));
        assert_eq!(c.job.as_deref(), Some("warehouse"));
        assert_eq!(c.stage.as_deref(), Some("sink:parquet"));
        assert_eq!(c.class.as_deref(), Some("permanent"));
        let want = if *kind == "unknown_schema" {
            "schema_unknown"
        } else {
            "decode_error"
        };
        assert_eq!(classifier.classify(c), want, "{}: {:?}", l.key, c.message);
        let at = (c.partition.expect("partition"), c.offset.expect("offset"));
        assert!(quarantined.insert(at), "{at:?} quarantined twice");
    }

    // The table holds every other record exactly once, and none of the quarantined.
    let store = object_store::local::LocalFileSystem::new_with_prefix(&root).expect("store");
    let rows = eventbus_tests::read_table(&store, &topic.as_str().into()).await;
    assert_eq!(eventbus_tests::table_duplicates(&rows), (0, 3_000 - 36));
    let ends = topic_io::end_offsets(&brokers, &topic).expect("ends");
    let mut expected = std::collections::BTreeSet::new();
    for (p, end) in &ends {
        expected.extend(
            (0..*end)
                .map(|o| (*p, o))
                .filter(|at| !quarantined.contains(at)),
        );
    }
    let written: std::collections::BTreeSet<_> =
        rows.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(
        written, expected,
        "the table is every record but the quarantined"
    );

    // No partition stalled behind its poison: the group is committed to the end.
    assert_committed_to_end(&brokers, &group, &topic, &ends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dead_letters_off_the_warehouse_stops_at_the_first_bad_record() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let topic = unique("wh-strict");
    cluster.create_topic(&topic, 1, 1).expect("topic");
    let stream = eventbus_tests::dlq::poison_stream(200, 50);
    topic_io::produce(&brokers, &topic, stream.records, |_| {}).expect("produce");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("tables");
    let group = unique("g");
    let file = warehouse_file(&brokers, &group, &topic, &root, "dead_letters = false\n");
    let err = run_batch(&file, 60)
        .await
        .expect_err("a record that cannot be decoded stops the job");
    let text = format!("{err:#}");
    // Record 49 is the first poison: bad bytes, at offset 49 of the only partition.
    assert!(
        text.contains(&topic) && text.contains("offset 49"),
        "{text}"
    );
    assert!(text.contains("wire format"), "{text}");
    let committed = topic_io::committed(&brokers, &group, &topic).expect("committed");
    assert!(
        committed.get(&0).is_none_or(|c| *c <= 49),
        "nothing committed past the bad record: {committed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warehouse_reads_writer_schemas_from_a_confluent_registry_and_waits_out_its_outage() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    eventbus_tests::warehouse_scenarios::registry_outage_stops_the_warehouse_and_a_restart_finishes(
        Some(&cluster),
        &cluster.bootstrap_servers(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_inspect_decodes_letters_with_the_registry_the_job_file_names() {
    use eventbus_tests::registry::RegistryDouble;
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let dlq = unique("inspect-registry");
    cluster.create_topic(&dlq, 1, 1).expect("dlq topic");
    // A letter whose writer schema only the registry knows (id 501).
    let registry = RegistryDouble::start("Basic b3BzOnNlY3JldA==", 500);
    let client = registry.client("ops", "secret");
    let text = eventbus_tests::vehicle_state_json();
    assert_eq!(client.register("a-value", &text).expect("register"), 501);
    let letter = eventbus_tests::vehicle_states(7, 501, 1).remove(0);
    topic_io::produce(&brokers, &dlq, vec![letter.clone()], |_| {}).expect("produce");

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("job.toml");
    std::fs::write(
        &config,
        format!(
            "[registry]\nurl = \"{}\"\nuser = \"ops\"\npassword = \"secret\"\n",
            registry.url
        ),
    )
    .expect("write config");
    let inspect = |extra: &[&str]| {
        let mut args = vec![
            "dlq",
            "inspect",
            "--brokers",
            &brokers,
            "--topic",
            &dlq,
            "--json",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = eventbus_tests::dlq::eventbus(&args);
        assert!(ok, "{err}");
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 1, "{out}");
        lines[0]["value"].clone()
    };
    let with_registry = inspect(&["--config", config.to_str().expect("utf-8")]);
    assert_eq!(
        with_registry["vehicle_id"].as_str(),
        Some(letter.0.as_str()),
        "decoded with the registry's schema: {with_registry}"
    );
    // The file registry has no id 501: the value is shown undecoded.
    assert!(inspect(&[]).is_null());
    // A DLQ topic the cluster does not have is named, with the cluster asked.
    let missing = unique("missing");
    let (ok, _, err) = eventbus_tests::dlq::eventbus(&[
        "dlq",
        "stats",
        "--brokers",
        &brokers,
        "--topic",
        &missing,
    ]);
    assert!(!ok);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("`{missing}` does not exist")) && last.contains(&brokers),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_stops_with_the_group_committed_to_the_end_even_when_the_table_is_ahead() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    eventbus_tests::warehouse_scenarios::batch_mode_commits_to_the_end_even_when_the_table_is_ahead(
        Some(&cluster),
        &cluster.bootstrap_servers(),
    )
    .await;
}
