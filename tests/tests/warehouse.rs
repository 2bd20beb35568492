//! The warehouse job against the real broker (tansu) and, for `s3://` tables, a real
//! S3-compatible server (moto): SIGKILLs at random moments, a store outage, two members
//! in one group. The tables are read back with the parquet crate: every produced record
//! exactly once, with its value, and by DuckDB (also over a table whose writer schema
//! gained a column). `make test` starts both servers.
#![cfg(feature = "real-broker")]
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus_jobs::topic_io;
use eventbus_schemas::events::VehicleState;
use eventbus_schemas::{Decoder, FileRegistry};
use eventbus_tests::{
    JobProcess, TableRow, eventbus_bin, read_table, shared_brokers, table_duplicates, unique,
};
use futures_util::StreamExt;
use object_store::ObjectStore;
use object_store::path::Path as StorePath;
use rand::Rng;

const READ: Duration = Duration::from_secs(180);

/// Produces `count` vehicle states to a new topic; returns (partition, offset) → event id.
async fn load(
    brokers: &str,
    partitions: i32,
    count: usize,
) -> (String, BTreeMap<(i32, i64), String>) {
    let topic = unique("wh");
    topic_io::create_topics(brokers, &[(&topic, partitions)])
        .await
        .expect("create topic");
    let records =
        eventbus_tests::vehicle_states(7, eventbus_tests::vehicle_state_schema().0, count);
    let produced = eventbus_tests::produce_and_read_back(brokers, &topic, records, READ).await;
    assert_eq!(produced.len(), count);
    let decoder = Decoder::new(Arc::new(FileRegistry::embedded().expect("registry")));
    let mut by_pos = BTreeMap::new();
    for m in produced {
        use rdkafka::Message;
        let v: VehicleState = decoder
            .decode_typed(m.payload().expect("value"), None)
            .expect("decode");
        by_pos.insert((m.partition(), m.offset()), v.event_id);
    }
    (topic, by_pos)
}

/// A loaded topic, a job file for it, and a folder for logs and local tables.
struct Fixture {
    topic: String,
    produced: BTreeMap<(i32, i64), String>,
    dir: tempfile::TempDir,
    cfg: std::path::PathBuf,
}

impl Fixture {
    /// Loads `count` records on `partitions` partitions; the table root is `root`, or
    /// `<dir>/tables` when `None`; `extra` is appended to the job file.
    async fn new(partitions: i32, count: usize, root: Option<&str>, extra: &str) -> Self {
        let brokers = shared_brokers();
        let (topic, produced) = load(&brokers, partitions, count).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let local = dir.path().join("tables");
        let root = root.map_or_else(|| local.display().to_string(), str::to_owned);
        let group = unique("g");
        let cfg = dir.path().join(format!("{group}.toml"));
        std::fs::write(
            &cfg,
            format!(
                r#"
[kafka]
"bootstrap.servers" = "{brokers}"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
# Also the rebalance timeout: a join waits at most this long for a member that died
# without leaving (tansu does not always evict it within the session timeout).
"max.poll.interval.ms" = "20000"
[source]
group_id = "{group}"
topics = ["{topic}"]
commit_interval_ms = 200
[warehouse]
table_root = "{root}"
roll_rows = 4000
max_age_ms = 500
[warehouse.event_time]
"{topic}" = "event_time"
{extra}
"#
            ),
        )
        .expect("write config");
        Self {
            topic,
            produced,
            dir,
            cfg,
        }
    }

    fn local_root(&self) -> std::path::PathBuf {
        self.dir.path().join("tables")
    }

    /// The local table's rows.
    async fn local_rows(&self) -> Vec<TableRow> {
        let store = object_store::local::LocalFileSystem::new_with_prefix(self.local_root())
            .expect("store");
        read_table(&store, &StorePath::from(self.topic.as_str())).await
    }
}

/// Every produced record exactly once, with its value.
fn check_exactly_once(rows: &[TableRow], produced: &BTreeMap<(i32, i64), String>) {
    let (dups, distinct) = table_duplicates(rows);
    assert_eq!(dups, 0, "rows written twice");
    assert_eq!(distinct, produced.len(), "rows missing");
    assert_eq!(rows.len(), produced.len());
    for r in rows {
        assert_eq!(
            produced.get(&(r.partition, r.offset)),
            Some(&r.event_id),
            "the row at {}/{} holds the value produced there",
            r.partition,
            r.offset
        );
    }
}

fn sigkill_at_random_moments(cfg: &Path, logs: &Path, kills: usize) {
    let mut rng = rand::rng();
    for n in 0..kills {
        let mut job = JobProcess::warehouse(cfg, logs, &format!("run{n}"), &[]);
        std::thread::sleep(Duration::from_millis(rng.random_range(700..3500)));
        job.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_five_times_leaves_every_record_exactly_once_in_the_table() {
    let fx = Fixture::new(6, 200_000, None, "").await;
    let (cfg, logs) = (fx.cfg.clone(), fx.dir.path().to_owned());
    tokio::task::spawn_blocking(move || {
        sigkill_at_random_moments(&cfg, &logs, 5);
        JobProcess::finish_warehouse(&cfg, &logs, "final");
    })
    .await
    .expect("join");
    let (topic, produced, root) = (&fx.topic, &fx.produced, fx.local_root());
    let store = object_store::local::LocalFileSystem::new_with_prefix(&root).expect("store");
    check_exactly_once(&fx.local_rows().await, produced);

    // The commit log lists every published file; the watermark names an hour.
    let commits: Vec<_> = store
        .list(Some(&StorePath::from(format!("{topic}/_eventbus/commits"))))
        .map(|o| o.expect("list").location)
        .collect()
        .await;
    let mut listed_rows = 0;
    let mut writers = std::collections::BTreeSet::new();
    for c in &commits {
        let bytes = store.get(c).await.unwrap().bytes().await.unwrap();
        let entry: eventbus_operators::sinks::parquet::CommitEntry =
            serde_json::from_slice(&bytes).expect("entry");
        listed_rows += entry.rows;
        writers.insert(entry.writer.clone());
        for f in &entry.files {
            let p = StorePath::from(format!("{topic}/{}", f.path));
            assert!(store.head(&p).await.is_ok(), "{} is published", f.path);
        }
    }
    assert_eq!(
        listed_rows as usize,
        produced.len(),
        "the commit log lists every row once"
    );
    let wm = store
        .get(&StorePath::from(format!(
            "{topic}/_eventbus/watermark.json"
        )))
        .await
        .expect("watermark")
        .bytes()
        .await
        .unwrap();
    let wm: eventbus_operators::sinks::parquet::Watermark = serde_json::from_slice(&wm).unwrap();
    assert_eq!(wm.partitions.len(), 6);

    // A reader no one here wrote agrees: DuckDB over the Hive layout.
    let glob = root.join(topic).join("**/*.parquet");
    assert_eq!(
        duckdb_row(&format!(
            "SELECT count(*), count(DISTINCT (_partition, _offset)), count(DISTINCT hour) > 0 \
             FROM read_parquet('{}', hive_partitioning = true)",
            glob.display()
        )),
        "200000 200000 True"
    );
}

/// The first row of a DuckDB query, its values separated by spaces: DuckDB is the
/// independent reader the loaders use (`make test` sets EVENTBUS_TEST_PYTHON to a python
/// that has it).
fn duckdb_row(query: &str) -> String {
    let python = std::env::var("EVENTBUS_TEST_PYTHON")
        .expect("EVENTBUS_TEST_PYTHON (a python with duckdb; `make test` sets it)");
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(format!(
            "import duckdb; print(*duckdb.sql(\"{query}\").fetchall()[0])"
        ))
        .output()
        .expect("run duckdb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_one_killed_still_write_every_record_once() {
    let fx = Fixture::new(6, 60_000, None, "").await;
    let (cfg, logs) = (fx.cfg.clone(), fx.dir.path().to_owned());
    tokio::task::spawn_blocking(move || {
        let mut a = JobProcess::warehouse(&cfg, &logs, "a", &[]);
        let mut b = JobProcess::warehouse(&cfg, &logs, "b", &[]);
        std::thread::sleep(Duration::from_millis(2500));
        a.kill();
        // b takes a's partitions after the session timeout and finishes them.
        std::thread::sleep(Duration::from_secs(15));
        b.signal("TERM");
        let status = b.wait(Duration::from_secs(60));
        assert!(status.success(), "{}", b.log_tail());
        JobProcess::finish_warehouse(&cfg, &logs, "final");
    })
    .await
    .expect("join");
    check_exactly_once(&fx.local_rows().await, &fx.produced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_stops_the_job_at_start_naming_the_root() {
    let Ok(endpoint) = std::env::var("EVENTBUS_TEST_S3") else {
        panic!("EVENTBUS_TEST_S3 is not set: run through `make test`, which starts the S3 server");
    };
    let extra = format!(
        "[warehouse.s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n"
    );
    let bucket = format!(
        "missing-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let root = format!("s3://{bucket}/tables");
    let fx = Fixture::new(2, 500, Some(&root), &extra).await;
    let out = std::process::Command::new(eventbus_bin())
        .args(["run", "warehouse", "--until-caught-up", "-c"])
        .arg(&fx.cfg)
        .output()
        .expect("run the warehouse");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a missing bucket must fail the job:\n{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("table root {root}")) && last.contains("the bucket does not exist"),
        "the final error names the root and the cause: {last}"
    );
    // Stopped before consuming: nothing is committed for the group.
    let group = fx.cfg.file_stem().and_then(|s| s.to_str()).expect("group");
    let committed = topic_io::committed(&shared_brokers(), group, &fx.topic).expect("committed");
    assert!(
        committed.values().all(|o| *o <= 0),
        "committed {committed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_mid_run_loses_and_doubles_nothing() {
    let Ok(endpoint) = std::env::var("EVENTBUS_TEST_S3") else {
        panic!("EVENTBUS_TEST_S3 is not set: run through `make test`, which starts the S3 server");
    };
    let pid: u32 = std::env::var("EVENTBUS_TEST_S3_PID")
        .expect("EVENTBUS_TEST_S3_PID")
        .trim()
        .parse()
        .expect("pid");
    let prefix = unique("run");
    let extra = format!(
        "[warehouse.s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n"
    );
    let root = format!("s3://eventbus-test/{prefix}");
    let fx = Fixture::new(6, 100_000, Some(&root), &extra).await;
    let (cfg, logs) = (fx.cfg.clone(), fx.dir.path().to_owned());
    tokio::task::spawn_blocking(move || {
        let signal = |sig: &str| {
            let ok = std::process::Command::new("kill")
                .args([&format!("-{sig}"), &pid.to_string()])
                .status()
                .expect("kill")
                .success();
            assert!(ok, "kill -{sig} {pid}");
        };
        let mut job = JobProcess::warehouse(&cfg, &logs, "outage", &[]);
        std::thread::sleep(Duration::from_millis(1500));
        // The server stops answering for a few seconds, then comes back.
        signal("STOP");
        std::thread::sleep(Duration::from_secs(4));
        signal("CONT");
        std::thread::sleep(Duration::from_secs(2));
        job.kill();
        JobProcess::finish_warehouse(&cfg, &logs, "final");
    })
    .await
    .expect("join");
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_bucket_name("eventbus-test")
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .expect("s3");
    let started = Instant::now();
    let rows = read_table(&store, &StorePath::from(format!("{prefix}/{}", fx.topic))).await;
    eprintln!(
        "read {} rows back from S3 in {:?}",
        rows.len(),
        started.elapsed()
    );
    check_exactly_once(&rows, &fx.produced);

    // The store refuses a second commit entry under a name that exists: the fence that
    // lets exactly one of two writers of a partition commit (not a check-then-put).
    let commits = StorePath::from(format!("{prefix}/{}/_eventbus/commits", fx.topic));
    let first = store
        .list(Some(&commits))
        .next()
        .await
        .expect("a commit entry")
        .expect("list")
        .location;
    let again = store
        .put_opts(
            &first,
            object_store::PutPayload::from_static(b"{}"),
            object_store::PutMode::Create.into(),
        )
        .await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "{again:?}"
    );
}

/// The loaders' reader over a table whose writer schema gained a column mid-partition:
/// DuckDB with `union_by_name` (a reader no one here wrote) sees every row once, the
/// new column filled in the newer rows and null in the older ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_reads_a_table_whose_schema_gained_a_column_by_name() {
    use apache_avro::types::Value;
    use eventbus_operators::{ParquetSink, ParquetSinkConfig, SchemaLookup};
    use eventbus_runtime::memory::MemorySource;
    use eventbus_runtime::{Job, Record};

    const V1: &str = r#"{"type":"record","name":"Reading","namespace":"t","fields":[
        {"name":"vehicle_id","type":"string"},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"speed","type":"double"}]}"#;
    let v2_text = V1.replace(
        r#"{"name":"speed","type":"double"}"#,
        r#"{"name":"speed","type":"double"},{"name":"note","type":["null","string"],"default":null}"#,
    );
    let (v1, v2) = (
        apache_avro::Schema::parse_str(V1).unwrap(),
        apache_avro::Schema::parse_str(&v2_text).unwrap(),
    );
    // 2026-11-27 10:00 UTC, a record a minute.
    let ts = |i: i64| 1_795_773_600_000 + i * 60_000;
    let wire = |id: u32, schema: &apache_avro::Schema, fields: Vec<(&str, Value)>| {
        let fields = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        bytes::Bytes::from(
            eventbus_schemas::encode_value(id, schema, Value::Record(fields)).unwrap(),
        )
    };
    let base = |i: i64| {
        vec![
            ("vehicle_id", Value::String(format!("v{i}"))),
            ("ts", Value::TimestampMillis(ts(i))),
            ("speed", Value::Double(i as f64)),
        ]
    };
    let mut records = Vec::new();
    for i in 0..4 {
        records.push(Record::new("r.v1", 0, i, wire(1, &v1, base(i))));
    }
    for i in 4..8 {
        let mut fields = base(i);
        // Resolved against the union by the encoder.
        let note = if i % 2 == 0 {
            Value::String(format!("n{i}"))
        } else {
            Value::Null
        };
        fields.push(("note", note));
        records.push(Record::new("r.v1", 0, i, wire(2, &v2, fields)));
    }

    let dir = tempfile::tempdir().unwrap();
    let mut config = ParquetSinkConfig::new(dir.path().to_str().unwrap());
    config.event_time_fields.insert("r.v1".into(), "ts".into());
    let schemas = [(1u32, V1.to_owned()), (2, v2_text)];
    let lookup: SchemaLookup = Arc::new(move |id| {
        Ok(schemas
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, s)| s.clone()))
    });
    let sink = ParquetSink::new(config, lookup, &[1, 2]).unwrap();
    Job::builder("union")
        .source(MemorySource::new(records))
        .sink(sink)
        .build()
        .unwrap()
        .run(std::future::pending())
        .await
        .expect("the job writes both schema versions");

    let glob = dir.path().join("r.v1").join("**/*.parquet");
    assert_eq!(
        duckdb_row(&format!(
            "SELECT count(*), count(DISTINCT _offset), count(note), string_agg(note, ',' ORDER BY _offset), \
             count(*) FILTER (WHERE vehicle_id = 'v' || _offset AND speed = _offset) \
             FROM read_parquet('{}', hive_partitioning = true, union_by_name = true)",
            glob.display()
        )),
        "8 8 2 n4,n6 8"
    );
}
