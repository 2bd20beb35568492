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
    JobProcess, TableRow, eventbus_bin, read_table, run_python, shared_brokers, table_duplicates,
    unique,
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
        let (topic, produced) = load(&shared_brokers(), partitions, count).await;
        Self::for_topic(topic, produced, root, extra)
    }

    /// A job file for `topic`, already loaded; `produced` is what was loaded, by position.
    fn for_topic(
        topic: String,
        produced: BTreeMap<(i32, i64), String>,
        root: Option<&str>,
        extra: &str,
    ) -> Self {
        let brokers = shared_brokers();
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

    /// The job file's consumer group (the file is named after it).
    fn group(&self) -> &str {
        self.cfg
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("group")
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
/// independent reader the loaders use.
fn duckdb_row(query: &str) -> String {
    let script = format!("import duckdb; print(*duckdb.sql(\"{query}\").fetchall()[0])");
    run_python::<&str>(&script, &[])
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

/// The job keeps running and no record arrives after the first 37: far below the 4,000
/// rows that roll a file, with no revoke and no shutdown, so only the sink's maximum age
/// (500 ms) can publish them. The offsets then follow the published data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_partition_is_published_by_age_while_the_job_runs() {
    let fx = Fixture::new(2, 37, None, "").await;
    let mut job = JobProcess::warehouse(&fx.cfg, fx.dir.path(), "quiet", &[]);
    // Joining the group on tansu takes a few seconds of this.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            job.exited().is_none(),
            "the job stopped:\n{}",
            job.log_tail()
        );
        if fx.local_root().join(&fx.topic).exists() {
            let rows = fx.local_rows().await;
            if rows.len() >= fx.produced.len() {
                check_exactly_once(&rows, &fx.produced);
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no file published by age; log:\n{}",
            job.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The offsets follow the published data while the job runs.
    eventbus_tests::wait_committed_to_end(
        &shared_brokers(),
        fx.group(),
        &fx.topic,
        Duration::from_secs(30),
        || job.log_tail(),
    );
    assert!(job.exited().is_none(), "published while still running");
    job.signal("TERM");
    let status = job.wait(Duration::from_secs(30));
    assert!(status.success(), "{}", job.log_tail());
    // Shutdown published nothing more: the table still holds each record once.
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
    let committed =
        topic_io::committed(&shared_brokers(), fx.group(), &fx.topic).expect("committed");
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
    let store = eventbus_tests::test_s3_store(&endpoint);
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

/// Produces VehicleState records with Python's confluent-kafka (lz4, some with headers),
/// framed in the Confluent wire format by hand around fastavro's schemaless encoding, and
/// writes what it produced as JSON.
const PY_PRODUCER: &str = r#"
import io, json, struct, sys, uuid, random
import fastavro
from confluent_kafka import Producer
brokers, topic, n, schema_path, schema_id, out = sys.argv[1:7]
schema = fastavro.parse_schema(json.load(open(schema_path)))
p = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "compression.type": "lz4"})
rnd = random.Random(11)
rows = []
for i in range(int(n)):
    v = {
        "event_id": str(uuid.UUID(int=rnd.getrandbits(128))),
        "vehicle_id": "veh-%04d" % (i % 37),
        "fleet_id": "fleet-%02d" % (i % 5),
        "event_time": 1764300000000 + i * 1500,
        "position": {"lat": 24.4 + i * 1e-5, "lon": 54.3 - i * 1e-5,
                     "heading_deg": None if i % 3 else float(i % 360)},
        "speed_kph": float(i % 120),
        "battery_pct": 50.5,
        "status": ["DRIVING", "IDLE", "CHARGING", "MAINTENANCE", "OFFLINE"][i % 5],
        "odometer_km": None if i % 2 else i * 1.5,
        "driver_id": None if i % 4 else "drv-%d" % i,
        "firmware_version": None if i % 7 == 0 else "1.2.3",
    }
    body = io.BytesIO()
    body.write(b"\x00" + struct.pack(">I", int(schema_id)))
    fastavro.schemaless_writer(body, schema, v)
    headers = [("traceparent", b"00-abc-def-01")] if i % 10 == 0 else None
    p.produce(topic, key=v["vehicle_id"].encode(), value=body.getvalue(), headers=headers)
    rows.append(v)
    if i % 500 == 0:
        p.poll(0)
assert p.flush(60) == 0, "records left unsent"
json.dump(rows, open(out, "w"))
"#;

/// Reads a table with DuckDB and compares it with the producer's JSON, field by field.
/// Prints: rows, distinct (partition, offset), the SQL type of event_id, rows that differ.
const PY_CHECK: &str = r#"
import json, sys, duckdb
glob, expected = sys.argv[1], {r["event_id"]: r for r in json.load(open(sys.argv[2]))}
rows = duckdb.sql("SELECT _partition, _offset, typeof(event_id), CAST(event_id AS VARCHAR), "
                  "vehicle_id, fleet_id, epoch_ms(event_time), position.lat, position.lon, "
                  "position.heading_deg, speed_kph, battery_pct, CAST(status AS VARCHAR), "
                  "odometer_km, driver_id, firmware_version "
                  f"FROM read_parquet('{glob}', hive_partitioning = true)").fetchall()
positions = {r[:2] for r in rows}
types = {r[2] for r in rows}
bad = 0
for r in rows:
    v = expected.get(r[3])
    want = None if v is None else (v["event_id"], v["vehicle_id"], v["fleet_id"], v["event_time"],
        v["position"]["lat"], v["position"]["lon"], v["position"]["heading_deg"], v["speed_kph"],
        v["battery_pct"], v["status"], v["odometer_km"], v["driver_id"], v["firmware_version"])
    if want != tuple(r[3:]):
        bad += 1
        if bad <= 3:
            print("differs:", r, want, file=sys.stderr)
print(len(rows), len(positions), ",".join(sorted(types)), bad)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_python_producers_load_exactly_and_duckdb_reads_their_values() {
    let brokers = shared_brokers();
    let topic = unique("whpy");
    topic_io::create_topics(&brokers, &[(&topic, 4)])
        .await
        .expect("create topic");
    let fx = Fixture::for_topic(topic.clone(), BTreeMap::new(), None, "");
    // The writer schema and its id from the same registry entry the warehouse resolves.
    let schema = fx.dir.path().join("VehicleState.json");
    std::fs::write(&schema, eventbus_tests::vehicle_state_json()).expect("write schema");
    let expected = fx.dir.path().join("produced.json");
    let id = eventbus_tests::vehicle_state_schema().0.to_string();
    let schema = schema.display().to_string();
    let expected_path = expected.display().to_string();
    run_python(
        PY_PRODUCER,
        &[
            brokers.as_str(),
            topic.as_str(),
            "3000",
            schema.as_str(),
            id.as_str(),
            expected_path.as_str(),
        ],
    );
    let (cfg, logs) = (fx.cfg.clone(), fx.dir.path().to_owned());
    tokio::task::spawn_blocking(move || JobProcess::finish_warehouse(&cfg, &logs, "load"))
        .await
        .expect("join");
    let glob = fx.local_root().join(&topic).join("**/*.parquet");
    // Every record once, each value as the producer wrote it, event_id a UUID to SQL.
    assert_eq!(
        run_python(PY_CHECK, &[glob.as_os_str(), expected.as_os_str()]),
        "3000 3000 UUID 0"
    );

    // The watermark agrees with the files, as DuckDB reads them: each partition's
    // progress is its last row and newest event, and every hour before the hour of the
    // oldest of those newest events is complete.
    let wm = std::fs::read(
        fx.local_root()
            .join(&topic)
            .join("_eventbus/watermark.json"),
    )
    .expect("watermark.json");
    let wm: eventbus_operators::sinks::parquet::Watermark =
        serde_json::from_slice(&wm).expect("watermark");
    let listed: Vec<String> = wm
        .partitions
        .iter()
        .map(|p| format!("{}:{}:{}", p.partition, p.next_offset, p.max_event_time_ms))
        .collect();
    assert_eq!(
        duckdb_row(&format!(
            "SELECT string_agg(_partition || ':' || next || ':' || newest, ',' \
             ORDER BY _partition), min(newest) // 3600000 * 3600000 \
             FROM (SELECT _partition, max(_offset) + 1 AS next, \
             max(epoch_ms(event_time)) AS newest \
             FROM read_parquet('{}', hive_partitioning = true) GROUP BY _partition)",
            glob.display()
        )),
        format!("{} {}", listed.join(","), wm.complete_before_ms)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_loader_never_sees_a_missing_file_or_a_row_twice() {
    // A loader polls `eventbus table files --after CURSOR` while the job publishes and
    // is SIGKILLed: every file it is given is whole and in place, no row comes twice, and
    // in the end it has taken every row.
    use std::sync::atomic::{AtomicBool, Ordering};
    let fx = Fixture::new(4, 60_000, None, "").await;
    let root = fx.local_root();
    std::fs::create_dir_all(&root).expect("root");
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (root, stop) = (root.clone(), stop.clone());
        std::thread::spawn(move || {
            let root_arg = root.display().to_string();
            let mut cursor: Option<String> = None;
            let mut rows: Vec<eventbus_tests::TableRow> = Vec::new();
            let mut polls = 0;
            loop {
                // One more poll after the writer stopped, to take what it published last.
                let last = stop.load(Ordering::Relaxed);
                let mut args = vec!["table", "files", "--table-root", &root_arg, "--json"];
                if let Some(c) = &cursor {
                    args.extend(["--after", c.as_str()]);
                }
                let (ok, out, err) = eventbus_tests::dlq::eventbus(&args);
                assert!(ok, "table files failed: {err}");
                let listed: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
                for f in listed["files"].as_array().expect("files") {
                    let path = root.join(f["path"].as_str().expect("path"));
                    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                        panic!(
                            "the loader was given {}, which is missing: {e}",
                            path.display()
                        )
                    });
                    let got =
                        eventbus_tests::parquet_rows(bytes.into(), &path.display().to_string());
                    assert_eq!(got.len() as u64, f["rows"].as_u64().expect("rows"));
                    let (start, end) = (
                        f["start_offset"].as_i64().expect("start"),
                        f["end_offset"].as_i64().expect("end"),
                    );
                    assert!(got.iter().all(|r| (start..=end).contains(&r.offset)));
                    rows.extend(got);
                }
                cursor = Some(listed["cursor"].as_str().expect("cursor").to_owned());
                polls += 1;
                if last {
                    return (rows, polls);
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let (cfg, logs) = (fx.cfg.clone(), fx.dir.path().to_owned());
    tokio::task::spawn_blocking(move || {
        sigkill_at_random_moments(&cfg, &logs, 4);
        JobProcess::finish_warehouse(&cfg, &logs, "final");
    })
    .await
    .expect("join");
    stop.store(true, Ordering::Relaxed);
    let (rows, polls) = loader.join().expect("the loader saw something wrong");
    assert!(
        polls > 5,
        "the loader polled {polls} times while the job ran"
    );
    check_exactly_once(&rows, &fx.produced);
}
