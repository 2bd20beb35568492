//! The dead-letter tool scenarios (`eventbus dlq`, the DLQ processor), run by the
//! mock-cluster tests and by the real-broker tests alike.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use eventbus_dlq::DlqConfig;
use eventbus_dlq::envelope::{REPLAY_COUNT, REPLAY_ID};
use eventbus_jobs::config::JobFile;
use eventbus_jobs::topic_io;
use eventbus_operators::RetryPolicy;
use eventbus_schemas::FileRegistry;
use eventbus_schemas::codec::Decoder;
use eventbus_schemas::events::VehicleState;

use crate::dlq::{
    JobSetup, Mock, TestSink, check_poison_outcome, create_topics, dlq_config, eventbus,
    filled_dlq, poison_stream, read_letters, read_records, run_job,
};
use crate::unique;

/// See the test of the same name.
pub async fn stats_and_inspect_count_and_show_the_letters_by_category(
    mock: Mock<'_>,
    brokers: &str,
) {
    let (topic, _) = filled_dlq(mock, brokers, 2, 2_000, 20).await;
    let dlq = format!("{topic}.dlq");
    let (ok, out, err) = eventbus(&[
        "dlq",
        "stats",
        "--brokers",
        brokers,
        "--topic",
        &dlq,
        "--json",
    ]);
    assert!(ok, "{err}");
    let stats: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(stats["letters"], 100);
    // bad bytes and truncated bodies are decode errors; an unknown id is schema_unknown;
    // failed validation and the sink's refusal are validation.
    assert_eq!(stats["by_category"]["decode_error"], 40, "{stats}");
    assert_eq!(stats["by_category"]["schema_unknown"], 20, "{stats}");
    assert_eq!(stats["by_category"]["validation"], 40, "{stats}");
    assert_eq!(stats["by_class"]["permanent"], 100);
    assert!(
        stats["first_failure_ms"].as_i64().unwrap() <= stats["last_failure_ms"].as_i64().unwrap()
    );

    let (ok, out, err) = eventbus(&[
        "dlq",
        "inspect",
        "--brokers",
        brokers,
        "--topic",
        &dlq,
        "--json",
        "--category",
        "validation",
        "--error-matches",
        "battery_pct",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    for l in &lines {
        assert_eq!(l["topic"], topic.as_str());
        assert_eq!(l["stage"], "operator");
        // Decoded through the registry: the bad value is there to see.
        assert_eq!(l["value"]["battery_pct"], 180.0);
    }
    // A bad filter names itself.
    let (ok, _, err) = eventbus(&[
        "dlq",
        "stats",
        "--brokers",
        brokers,
        "--topic",
        &dlq,
        "--offsets",
        "9..3",
    ]);
    assert!(!ok);
    assert!(err.contains("--offsets"), "{err}");
}

/// See the test of the same name.
pub async fn replay_sends_exactly_the_selected_letters_at_the_rate_and_never_twice(
    mock: Mock<'_>,
    brokers: &str,
) {
    let (topic, stream) = filled_dlq(mock, brokers, 2, 2_000, 20).await;
    let dlq = format!("{topic}.dlq");
    let target = unique("replayed");
    create_topics(mock, brokers, &[(&target, 1)]).await;
    let args = |extra: &[&str]| {
        let mut a = vec![
            "dlq",
            "replay",
            "--brokers",
            brokers,
            "--topic",
            &dlq,
            "--to",
            &target,
            "--category",
            "schema_unknown",
            "--rate",
            "10/s",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let run = |a: Vec<String>| eventbus(&a.iter().map(String::as_str).collect::<Vec<_>>());

    // A dry run lists the 20 letters and sends nothing.
    let (ok, out, err) = run(args(&["--dry-run"]));
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("would send")).count(),
        20,
        "{out}"
    );
    assert_eq!(topic_io::end_offsets(brokers, &target).unwrap()[&0], 0);
    // Without --yes and without a terminal it refuses.
    let (ok, _, err) = run(args(&[]));
    assert!(!ok && err.contains("--yes"), "{err}");

    let (ok, out, err) = run(args(&["--yes"]));
    assert!(ok, "{err}");
    let sent = read_records(brokers, &target);
    assert_eq!(sent.len(), 20, "{out}");
    let unknown: Vec<&String> = stream
        .poison
        .iter()
        .filter(|(_, k)| **k == "unknown_schema")
        .map(|(key, _)| key)
        .collect();
    for (key, value, headers, _) in &sent {
        assert!(unknown.contains(&key), "{key} was not selected");
        let i = stream.records.iter().position(|(k, _)| k == key).unwrap();
        assert_eq!(value, &stream.records[i].1, "the value is kept");
        assert_eq!(headers.get(REPLAY_COUNT), Some(&b"1"[..]));
        assert!(headers.get(REPLAY_ID).is_some());
        assert!(
            headers.get("kafka_dlt-original-topic").is_none(),
            "context is removed"
        );
    }
    // The rate, measured from the records' timestamps: 20 letters at 10/s take about
    // 1.9 s between the first and the last. Tolerance: ±25%.
    let ts: Vec<i64> = sent.iter().filter_map(|r| r.3).collect();
    let span = (ts.iter().max().unwrap() - ts.iter().min().unwrap()) as f64 / 1000.0;
    let rate = 19.0 / span;
    assert!(
        (7.5..=12.5).contains(&rate),
        "measured {rate:.1}/s over {span:.2} s; {out}"
    );

    // The same replay again sends nothing.
    let (ok, out, err) = run(args(&["--yes"]));
    assert!(ok, "{err}");
    assert!(out.contains("sent 0"), "{out}");
    assert_eq!(read_records(brokers, &target).len(), 20);
}

/// See the test of the same name.
pub async fn export_edit_import_delivers_the_fixed_records_and_a_bad_edit_produces_nothing(
    mock: Mock<'_>,
    brokers: &str,
) {
    let (topic, _) = filled_dlq(mock, brokers, 2, 2_000, 20).await;
    let dlq = format!("{topic}.dlq");
    let fixed = unique("fixed");
    create_topics(mock, brokers, &[(&fixed, 1)]).await;
    let (ok, out, err) = eventbus(&[
        "dlq",
        "export",
        "--brokers",
        brokers,
        "--topic",
        &dlq,
        "--category",
        "validation",
    ]);
    assert!(ok, "{err}");
    let mut lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40);
    // The operator's fix: a sane battery level, an accepted fleet.
    for l in &mut lines {
        l["value"]["battery_pct"] = serde_json::json!(55.5);
        l["value"]["fleet_id"] = serde_json::json!("fleet-01");
    }
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("fixed.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&good, &text).unwrap();

    // A bad edit on lines 3 and 7: nothing is produced, both are named.
    let mut broken = lines.clone();
    broken[2]["value"]["status"] = serde_json::json!("FLYING");
    broken[6]["value"]["position"]["lat"] = serde_json::json!("north");
    let bad = dir.path().join("broken.jsonl");
    std::fs::write(
        &bad,
        broken.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let (ok, _, err) = eventbus(&[
        "dlq",
        "import",
        bad.to_str().unwrap(),
        "--brokers",
        brokers,
        "--to",
        &fixed,
    ]);
    assert!(!ok);
    assert!(
        err.contains("broken.jsonl:3:") && err.contains("FLYING"),
        "{err}"
    );
    assert!(
        err.contains("broken.jsonl:7:") && err.contains("position.lat"),
        "{err}"
    );
    assert_eq!(
        topic_io::end_offsets(brokers, &fixed).unwrap()[&0],
        0,
        "nothing produced"
    );

    let (ok, out, err) = eventbus(&[
        "dlq",
        "import",
        good.to_str().unwrap(),
        "--brokers",
        brokers,
        "--to",
        &fixed,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("imported 40"), "{out}");
    let decoder = Decoder::new(FileRegistry::embedded().unwrap());
    let records = read_records(brokers, &fixed);
    assert_eq!(records.len(), 40);
    for (_, value, headers, _) in &records {
        let v: VehicleState = decoder.decode_typed(value, None).unwrap();
        assert_eq!(v.battery_pct, 55.5);
        assert_eq!(v.fleet_id, "fleet-01");
        assert_eq!(headers.get(REPLAY_COUNT), Some(&b"1"[..]));
    }
}

/// See the test of the same name.
pub async fn a_letter_is_parked_after_the_maximum_replays_and_nothing_loops(
    mock: Mock<'_>,
    brokers: &str,
) {
    let topic = unique("vehicle.state");
    let dlq = format!("{topic}.dlq");
    let parked = format!("{dlq}.parked");
    create_topics(mock, brokers, &[(&topic, 1), (&dlq, 1), (&parked, 1)]).await;
    let stream = poison_stream(5, usize::MAX);
    topic_io::produce(brokers, &topic, stream.records.clone(), |_| {}).unwrap();

    // The processor: cool-off 0, two replays at most.
    let file = JobFile::parse(&format!(
        "[source]\ngroup_id = \"{}\"\ntopics = [\"{dlq}\"]\ncommit_interval_ms = 100\n\
         [dlq_processor]\ncool_off_ms = 0\nmax_replays = 2\nrate_per_sec = 50\n",
        unique("proc")
    ))
    .unwrap();
    let mut file = file;
    file.kafka.set("bootstrap.servers", brokers);
    let processor = eventbus_jobs::dlq_processor::job(&file).unwrap();
    let counts = processor.counts.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proc_run = tokio::spawn(processor.job.run(async move {
        let _ = stop_rx.await;
    }));

    // The job: its sink is down for good, so every try ends in the DLQ as transient.
    let sink = TestSink::new();
    sink.down.store(true, Ordering::Relaxed);
    let job_topic = topic.clone();
    let job_brokers = brokers.to_owned();
    let group = unique("g");
    let job_group = group.clone();
    let job = tokio::spawn(async move {
        run_job(JobSetup {
            brokers: &job_brokers,
            group: &job_group,
            topic: &job_topic,
            dlq: DlqConfig::default(),
            retry: Some(RetryPolicy {
                initial_delay_ms: 1,
                multiplier: 1.0,
                max_delay_ms: 1,
                max_attempts: 2,
                max_elapsed_ms: 1_000,
            }),
            sink,
            kafka: vec![],
            // 5 records, then 2 replays of each.
            until_committed: 15,
            timeout: Duration::from_secs(60),
        })
        .await
    });
    let run = job.await.unwrap();
    run.result.expect("the job ends cleanly");
    crate::wait_records(brokers, &parked, 5, Duration::from_secs(30));
    // Nothing more happens: the parked letters stay parked.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(());
    proc_run.await.unwrap().expect("the processor ends cleanly");

    let letters = read_letters(brokers, &dlq);
    assert_eq!(letters.len(), 15, "each record failed three times");
    let parked_letters = read_letters(brokers, &parked);
    assert_eq!(parked_letters.len(), 5, "each record parked once");
    let mut keys: Vec<&str> = parked_letters.iter().map(|l| l.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 5);
    for l in &parked_letters {
        assert_eq!(l.context.replay_count, 2);
        assert_eq!(l.context.class.as_deref(), Some("transient"));
    }
    let originals = topic_io::end_offsets(brokers, &topic).unwrap()[&0];
    assert_eq!(originals, 15, "5 records and 2 replays of each");
    let table: BTreeMap<_, _> = counts.lock().unwrap().clone();
    let c = table[&(topic.clone(), "downstream_unavailable".to_owned())];
    assert_eq!((c.letters, c.replayed, c.parked), (15, 10, 5), "{table:?}");

    // The replays are for the failing group only: they name it, and another group's job
    // reading the same topic takes them as done without processing them.
    let records = read_records(brokers, &topic);
    for (_, _, headers, _) in &records[5..] {
        assert_eq!(
            headers.get(eventbus_runtime::REPLAY_GROUP),
            Some(group.as_bytes()),
            "a replay names the group that failed it"
        );
    }
    let bystander = TestSink::new();
    let run = run_job(JobSetup {
        brokers,
        group: &unique("bystander"),
        topic: &topic,
        dlq: DlqConfig::default(),
        retry: None,
        sink: bystander.clone(),
        kafka: vec![],
        until_committed: 15,
        timeout: Duration::from_secs(60),
    })
    .await;
    run.result.expect("the bystander ends cleanly");
    assert_eq!(
        bystander.collected.records().len(),
        5,
        "another group processes the 5 records, not the 10 replays"
    );

    // By hand, with the processor's config: what it replayed on its own is not sent
    // again; the parked letters (replayed twice already) are.
    let target = unique("by-hand");
    create_topics(mock, brokers, &[(&target, 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("processor.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kafka]\n\"bootstrap.servers\" = \"{brokers}\"\n{}",
            file_text_of_processor(&file)
        ),
    )
    .unwrap();
    let replay_args = |extra: &[&str]| {
        let mut a = vec![
            "dlq",
            "replay",
            "--topic",
            dlq.as_str(),
            "--config",
            cfg.to_str().unwrap(),
            "--to",
            target.as_str(),
            "--yes",
        ];
        a.extend_from_slice(extra);
        eventbus(&a)
    };
    let (ok, out, err) = replay_args(&[]);
    assert!(ok, "{err}");
    assert!(out.contains("sent 5 of 15"), "{out}");
    assert!(
        out.contains("10 letters the DLQ processor already replayed"),
        "{out}"
    );
    let (ok, out, err) = replay_args(&["--force", "--id", "forced"]);
    assert!(ok, "{err}");
    assert!(out.contains("sent 15 of 15"), "{out}");
    assert_eq!(read_records(brokers, &target).len(), 20);
}

/// The processor's job file as text (its [source] and [dlq_processor]), for the CLI.
fn file_text_of_processor(file: &JobFile) -> String {
    let source = file.source().unwrap();
    let p = file.dlq_processor.clone().unwrap_or_default();
    format!(
        "[source]\ngroup_id = \"{}\"\ntopics = [{}]\n[dlq_processor]\ncool_off_ms = {}\nmax_replays = {}\n",
        source.group_id,
        source
            .topics
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", "),
        p.cool_off_ms,
        p.max_replays
    )
}

/// See the test of the same name.
pub async fn a_transient_sink_outage_inside_the_retry_budget_dead_letters_nothing(
    mock: Mock<'_>,
    brokers: &str,
) {
    let topic = unique("vehicle.state");
    let dlq = format!("{topic}.dlq");
    create_topics(mock, brokers, &[(&topic, 3), (&dlq, 3)]).await;
    // Clean records only.
    let stream = poison_stream(3_000, usize::MAX);
    topic_io::produce(brokers, &topic, stream.records.clone(), |_| {}).unwrap();

    let sink = TestSink::new();
    // The outage lasts 2 s from the first refusal: well inside the retry budget.
    sink.down_for(Duration::from_secs(2));
    let run = run_job(JobSetup {
        brokers,
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
    let total: i64 = topic_io::end_offsets(brokers, &dlq).unwrap().values().sum();
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

/// See the test of the same name.
pub async fn retries_exhausted_send_the_record_to_the_dlq_with_its_attempts(
    mock: Mock<'_>,
    brokers: &str,
) {
    let topic = unique("vehicle.state");
    let dlq = format!("{topic}.dlq");
    create_topics(mock, brokers, &[(&topic, 1), (&dlq, 1)]).await;
    let stream = poison_stream(5, usize::MAX);
    topic_io::produce(brokers, &topic, stream.records.clone(), |_| {}).unwrap();
    let sink = TestSink::new();
    sink.down.store(true, Ordering::Relaxed);
    let run = run_job(JobSetup {
        brokers,
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
    let letters = read_letters(brokers, &dlq);
    assert_eq!(letters.len(), 5);
    for l in &letters {
        assert_eq!(l.context.class.as_deref(), Some("transient"));
        assert_eq!(l.context.attempts, Some(3));
        assert_eq!(l.context.stage.as_deref(), Some("sink:test"));
    }
}

/// A finished poison run.
pub struct PoisonRun {
    /// The source topic.
    pub topic: String,
    /// Its DLQ.
    pub dlq: String,
    /// The letters read back.
    pub letters: Vec<crate::dlq::Letter>,
    /// How long the job ran (group join and commit interval included).
    pub elapsed: Duration,
}

/// 10k records on 4 partitions, 2% poison of five kinds: every poison record is in the
/// DLQ once with the right headers, every good record reaches the sink once, and every
/// partition is committed to its end (none stalled behind its poison).
pub async fn poison_goes_to_the_dlq_once(mock: Mock<'_>, brokers: &str) -> PoisonRun {
    let topic = unique("vehicle.state");
    let dlq = format!("{topic}.dlq");
    create_topics(mock, brokers, &[(&topic, 4), (&dlq, 4)]).await;
    let stream = poison_stream(10_000, 50);
    assert_eq!(stream.poison.len(), 200);
    let run = poison_or_clean_run(brokers, &topic, &stream).await;
    let report = run.result.as_ref().expect("the job ends cleanly");
    let ends = topic_io::end_offsets(brokers, &topic).unwrap();
    for (p, end) in &ends {
        let committed = report
            .committed
            .iter()
            .find(|(tp, _)| tp.partition == *p)
            .map(|(_, o)| *o);
        assert_eq!(committed, Some(*end), "partition {p} committed to its end");
    }
    let letters = read_letters(brokers, &dlq);
    check_poison_outcome(&stream, &topic, &letters, &run.sink.collected.records());
    PoisonRun {
        topic,
        dlq,
        letters,
        elapsed: run.elapsed,
    }
}

/// The same volume without poison: how long a clean run takes, for comparison.
pub async fn clean_run_elapsed(mock: Mock<'_>, brokers: &str) -> Duration {
    let topic = unique("vehicle.state");
    create_topics(mock, brokers, &[(&topic, 4), (&format!("{topic}.dlq"), 4)]).await;
    let run = poison_or_clean_run(brokers, &topic, &poison_stream(10_000, usize::MAX)).await;
    run.result.as_ref().expect("the clean run ends cleanly");
    run.elapsed
}

struct SinkRun {
    result: Result<eventbus_runtime::JobReport, eventbus_runtime::RuntimeError>,
    elapsed: Duration,
    sink: TestSink,
}

async fn poison_or_clean_run(
    brokers: &str,
    topic: &str,
    stream: &crate::dlq::PoisonStream,
) -> SinkRun {
    topic_io::produce(brokers, topic, stream.records.clone(), |_| {}).unwrap();
    let sink = TestSink::new();
    let run = run_job(JobSetup {
        brokers,
        group: &unique("g"),
        topic,
        dlq: dlq_config(topic),
        retry: None,
        sink: sink.clone(),
        kafka: vec![],
        until_committed: i64::try_from(stream.records.len()).unwrap(),
        timeout: Duration::from_secs(180),
    })
    .await;
    SinkRun {
        result: run.result,
        elapsed: run.elapsed,
        sink,
    }
}

/// See the test of the same name.
pub async fn while_one_partition_backs_off_the_others_keep_flowing(mock: Mock<'_>, brokers: &str) {
    let topic = unique("vehicle.state");
    let dlq = format!("{topic}.dlq");
    create_topics(mock, brokers, &[(&topic, 2), (&dlq, 2)]).await;
    let stream = poison_stream(2_000, usize::MAX);
    let per_partition =
        topic_io::produce_by_partition(brokers, &topic, stream.records.clone(), |_| {}).unwrap();
    assert!(
        per_partition.len() == 2,
        "both partitions hold records: {per_partition:?}"
    );
    // The sink refuses partition 0 for 3 s from its first refusal; partition 1 is fine.
    let mut sink = TestSink::new();
    sink.only_partition = Some(0);
    sink.down_for(Duration::from_secs(3));
    let run = run_job(JobSetup {
        brokers,
        group: &unique("g"),
        topic: &topic,
        dlq: dlq_config(&topic),
        retry: Some(RetryPolicy {
            initial_delay_ms: 50,
            multiplier: 2.0,
            max_delay_ms: 500,
            max_attempts: 100,
            max_elapsed_ms: 30_000,
        }),
        sink: sink.clone(),
        kafka: vec![],
        until_committed: 2_000,
        timeout: Duration::from_secs(120),
    })
    .await;
    run.result.expect("the job ends cleanly");
    let delivered = sink.collected.records();
    assert_eq!(
        delivered.len(),
        2_000,
        "everything delivered once the outage ends"
    );
    // Partition 1 did not wait for partition 0's backoff: all of it was delivered before
    // partition 0's first record got through.
    let first_p0 = delivered.iter().position(|r| r.partition == 0).unwrap();
    let p1_before = delivered[..first_p0]
        .iter()
        .filter(|r| r.partition == 1)
        .count() as u64;
    assert_eq!(
        p1_before, per_partition[&1],
        "partition 1 flowed while partition 0 backed off"
    );
    let total: i64 = topic_io::end_offsets(brokers, &dlq).unwrap().values().sum();
    assert_eq!(total, 0, "nothing reached the DLQ");
}

/// The same replay run again and again while letters keep arriving: every letter reaches
/// the target exactly once. (Each run commits what it read, never an older position.)
pub async fn a_replay_run_again_while_letters_arrive_sends_each_letter_once(
    mock: Mock<'_>,
    brokers: &str,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use eventbus_dlq::replay::{ReplayOptions, replay};
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    let dlq = unique("arriving.dlq");
    let target = unique("arriving-target");
    create_topics(mock, brokers, &[(&dlq, 2), (&target, 1)]).await;

    // A writer appends letters L0, L1, ... in small bursts until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, written, brokers, dlq) = (
            stop.clone(),
            written.clone(),
            brokers.to_owned(),
            dlq.clone(),
        );
        std::thread::spawn(move || {
            let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("linger.ms", "0")
                .create()
                .expect("producer");
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    let key = format!("L{n}");
                    p.send(BaseRecord::to(&dlq).key(&key).payload(&b"letter"[..]))
                        .map_err(|(e, _)| e)
                        .expect("queue a letter");
                    n += 1;
                }
                p.flush(Duration::from_secs(10)).expect("flush");
                written.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let mut props = eventbus_runtime::KafkaProperties::new();
    props.set("bootstrap.servers", brokers);
    let opts = ReplayOptions {
        dlq_topic: dlq.clone(),
        to: Some(target.clone()),
        ..ReplayOptions::default()
    };
    let run = |props: &eventbus_runtime::KafkaProperties, opts: &ReplayOptions| {
        replay(props, opts, &Default::default(), |_, _| {}).expect("replay")
    };
    // Runs while letters arrive, then one after the last letter.
    let mut sent = 0;
    for _ in 0..6 {
        let (p, o) = (props.clone(), opts.clone());
        sent += tokio::task::spawn_blocking(move || run(&p, &o).sent)
            .await
            .expect("join");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let (p, o) = (props.clone(), opts.clone());
    sent += tokio::task::spawn_blocking(move || run(&p, &o).sent)
        .await
        .expect("join");

    let total = written.load(Ordering::Relaxed);
    assert!(total > 200, "the writer wrote {total} letters");
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for (key, ..) in read_records(brokers, &target) {
        *seen.entry(key).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} of {total} letters were sent more than once, e.g. {:?}",
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(seen.len(), total, "every letter was sent");
    assert_eq!(sent as usize, total, "the reports add up to every letter");
}
