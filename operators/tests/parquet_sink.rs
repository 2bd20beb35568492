//! The Parquet sink on the local filesystem: the Avro → Arrow mapping of every construct,
//! the Kafka columns, the hour folders, schema changes rolling files, a construct that
//! cannot map failing at start, bad bytes failing only their record, two writers of one
//! partition, and a store that does not honour conditional puts refused at start.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use apache_avro::types::Value;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int32Type, TimeUnit};
use bytes::Bytes;
use eventbus_operators::sinks::parquet::CommitEntry;
use eventbus_operators::{ParquetSink, ParquetSinkConfig, SchemaLookup};
use eventbus_runtime::memory::MemorySource;
use eventbus_runtime::{Job, Record};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

const EVERYTHING: &str = r#"{"type":"record","name":"Everything","namespace":"t","fields":[
 {"name":"id","type":{"type":"string","logicalType":"uuid"}},
 {"name":"ts_ms","type":{"type":"long","logicalType":"timestamp-millis"}},
 {"name":"ts_us","type":{"type":"long","logicalType":"timestamp-micros"}},
 {"name":"day","type":{"type":"int","logicalType":"date"}},
 {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
 {"name":"raw","type":"bytes"},
 {"name":"mac","type":{"type":"fixed","name":"Mac","size":6}},
 {"name":"color","type":{"type":"enum","name":"Color","symbols":["RED","GREEN"]}},
 {"name":"tags","type":{"type":"array","items":"string"}},
 {"name":"attrs","type":{"type":"map","values":"long"}},
 {"name":"maybe","type":["null","double"],"default":null},
 {"name":"inner","type":["null",{"type":"record","name":"Inner","fields":[
   {"name":"a","type":"int"},
   {"name":"b","type":["null","string"],"default":null}]}],"default":null}
]}"#;

/// The same record with one added defaulted field: a newer writer version.
fn everything_v2() -> String {
    EVERYTHING.replacen(
        r#"{"name":"id","#,
        r#"{"name":"note","type":"string","default":""},{"name":"id","#,
        1,
    )
}

fn lookup(schemas: Vec<(u32, String)>) -> SchemaLookup {
    Arc::new(move |id| {
        Ok(schemas
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, s)| s.clone()))
    })
}

fn wire(id: u32, schema: &apache_avro::Schema, value: Value) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(apache_avro::to_avro_datum(schema, value).expect("encode"));
    Bytes::from(out)
}

const HOUR_MS: i64 = 3_600_000;
/// 2026-11-27 10:00 UTC.
const T0: i64 = 1_795_773_600_000;

fn sample(schema: &apache_avro::Schema, full: bool, ts: i64, v2: bool) -> Value {
    let mut fields = Vec::new();
    if v2 {
        fields.push(("note".into(), Value::String("v2".into())));
    }
    fields.extend([
        (
            "id".into(),
            Value::Uuid("6f1c8a4e-1b2d-4c3e-9f00-112233445566".parse().unwrap()),
        ),
        ("ts_ms".into(), Value::TimestampMillis(ts)),
        ("ts_us".into(), Value::TimestampMicros(ts * 1000)),
        ("day".into(), Value::Date(20_000)),
        (
            "price".into(),
            Value::Decimal(apache_avro::Decimal::from(vec![0, 0, 0, 0x30, 0x39])),
        ),
        ("raw".into(), Value::Bytes(vec![1, 2, 3])),
        (
            "mac".into(),
            Value::Fixed(6, vec![0xa, 0xb, 0xc, 0xd, 0xe, 0xf]),
        ),
        ("color".into(), Value::Enum(1, "GREEN".into())),
        (
            "tags".into(),
            Value::Array(vec![Value::String("x".into()), Value::String("y".into())]),
        ),
        (
            "attrs".into(),
            Value::Map([("k".to_owned(), Value::Long(7))].into()),
        ),
        (
            "maybe".into(),
            if full {
                Value::Union(1, Box::new(Value::Double(2.5)))
            } else {
                Value::Union(0, Box::new(Value::Null))
            },
        ),
        (
            "inner".into(),
            if full {
                Value::Union(
                    1,
                    Box::new(Value::Record(vec![
                        ("a".into(), Value::Int(4)),
                        ("b".into(), Value::Union(0, Box::new(Value::Null))),
                    ])),
                )
            } else {
                Value::Union(0, Box::new(Value::Null))
            },
        ),
    ]);
    let v = Value::Record(fields);
    assert!(v.validate(schema), "the sample fits the schema");
    v
}

/// Runs records through a sink into `root`, to the end of the source.
async fn run(
    root: &std::path::Path,
    schemas: Vec<(u32, String)>,
    records: Vec<Record<Bytes>>,
) -> Result<(), String> {
    let mut config = ParquetSinkConfig::new(root.to_str().unwrap());
    config
        .event_time_fields
        .insert("t.v1".into(), "ts_ms".into());
    let ids: Vec<u32> = schemas.iter().map(|(k, _)| *k).collect();
    let sink = ParquetSink::new(config, lookup(schemas), &ids).map_err(|e| e.to_string())?;
    run_sink(sink, records).await
}

/// Every published file, read back, by path.
fn read(root: &std::path::Path) -> Vec<(String, RecordBatch)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                let f = std::fs::File::open(&p).unwrap();
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
                        .unwrap()
                        .build()
                        .unwrap();
                for b in reader {
                    let rel = p.strip_prefix(root).unwrap().display().to_string();
                    out.push((rel, b.unwrap()));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The `_offset` column of every published file, in path order.
fn table_offsets(root: &std::path::Path) -> Vec<i64> {
    read(root)
        .iter()
        .flat_map(|(_, b)| {
            b.column_by_name("_offset")
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

/// Partition 0's commit entries, by start offset.
fn commit_entries(root: &std::path::Path) -> Vec<CommitEntry> {
    let dir = root.join("t.v1/_eventbus/commits/00000");
    let mut entries: Vec<CommitEntry> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    entries.sort_by_key(|e| e.start_offset);
    entries
}

fn record(offset: i64, bytes: Bytes) -> Record<Bytes> {
    let mut r = Record::new("t.v1", 0, offset, bytes);
    r.timestamp = Some(T0 + offset);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_avro_construct_maps_to_its_arrow_type_and_values_survive() {
    let schema = apache_avro::Schema::parse_str(EVERYTHING).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let records = vec![
        record(0, wire(1, &schema, sample(&schema, true, T0, false))),
        record(1, wire(1, &schema, sample(&schema, false, T0 + 1, false))),
    ];
    run(dir.path(), vec![(1, EVERYTHING.to_owned())], records)
        .await
        .unwrap();
    let files = read(dir.path());
    assert_eq!(files.len(), 1);
    let (path, batch) = &files[0];
    assert!(
        path.starts_with("t.v1/dt=2026-11-27/hour=10/00000-"),
        "{path}"
    );
    let s = batch.schema();
    let ty = |n: &str| s.field_with_name(n).unwrap().data_type().clone();
    let nullable = |n: &str| s.field_with_name(n).unwrap().is_nullable();
    assert_eq!(ty("id"), DataType::FixedSizeBinary(16));
    assert_eq!(
        s.field_with_name("id").unwrap().extension_type_name(),
        Some("arrow.uuid")
    );
    // A reader that ignores the Arrow schema in the footer sees Parquet's UUID type.
    let file = std::fs::File::open(dir.path().join(path)).unwrap();
    let parquet_file = parquet::file::reader::SerializedFileReader::new(file).unwrap();
    let columns = parquet::file::reader::FileReader::metadata(&parquet_file)
        .file_metadata()
        .schema_descr()
        .columns()
        .to_vec();
    let logical = |n: &str| {
        let c = columns.iter().find(|c| c.path().string() == n).unwrap();
        c.logical_type_ref().cloned()
    };
    assert_eq!(logical("id"), Some(parquet::basic::LogicalType::Uuid));
    assert_eq!(logical("mac"), None);
    assert!(
        matches!(ty("ts_ms"), DataType::Timestamp(TimeUnit::Millisecond, Some(tz)) if tz.as_ref() == "+00:00")
    );
    assert!(matches!(
        ty("ts_us"),
        DataType::Timestamp(TimeUnit::Microsecond, Some(_))
    ));
    assert_eq!(ty("day"), DataType::Date32);
    assert_eq!(ty("price"), DataType::Decimal128(10, 2));
    assert_eq!(ty("raw"), DataType::Binary);
    assert_eq!(ty("mac"), DataType::FixedSizeBinary(6));
    assert!(
        matches!(ty("color"), DataType::Dictionary(k, v) if *k == DataType::Int32 && *v == DataType::Utf8)
    );
    assert!(matches!(ty("tags"), DataType::List(f) if *f.data_type() == DataType::Utf8));
    assert!(matches!(ty("attrs"), DataType::Map(_, _)));
    assert_eq!(ty("maybe"), DataType::Float64);
    assert!(nullable("maybe") && !nullable("ts_ms"));
    assert!(matches!(ty("inner"), DataType::Struct(f) if f.len() == 2 && f[1].is_nullable()));
    assert!(nullable("inner"));
    for (col, t) in [
        ("_topic", DataType::Utf8),
        ("_partition", DataType::Int32),
        ("_offset", DataType::Int64),
    ] {
        assert_eq!(ty(col), t);
    }
    assert!(matches!(
        ty("_kafka_ts"),
        DataType::Timestamp(TimeUnit::Millisecond, Some(_))
    ));

    // Values.
    assert_eq!(batch.num_rows(), 2);
    let col = |n: &str| batch.column_by_name(n).unwrap().clone();
    let price = col("price");
    assert_eq!(
        price
            .as_primitive::<arrow::datatypes::Decimal128Type>()
            .value(0),
        12_345
    );
    let color = col("color");
    let color = color.as_dictionary::<Int32Type>();
    let symbols = color.values().as_string::<i32>();
    assert_eq!(symbols.value(color.keys().value(0) as usize), "GREEN");
    let maybe = col("maybe");
    assert_eq!(
        maybe
            .as_primitive::<arrow::datatypes::Float64Type>()
            .value(0),
        2.5
    );
    assert!(maybe.is_null(1));
    let inner = col("inner");
    let inner = inner.as_struct();
    assert!(inner.is_valid(0) && inner.is_null(1));
    assert_eq!(inner.column(0).as_primitive::<Int32Type>().value(0), 4);
    assert!(inner.column(1).is_null(0));
    let offsets = col("_offset");
    assert_eq!(
        offsets
            .as_primitive::<arrow::datatypes::Int64Type>()
            .values(),
        &[0, 1]
    );
    let id = col("id");
    assert_eq!(
        id.as_fixed_size_binary().value(0),
        &[
            0x6f, 0x1c, 0x8a, 0x4e, 0x1b, 0x2d, 0x4c, 0x3e, 0x9f, 0x00, 0x11, 0x22, 0x33, 0x44,
            0x55, 0x66
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hours_and_a_newer_schema_roll_files_and_the_commit_log_lists_them() {
    let v1 = apache_avro::Schema::parse_str(EVERYTHING).unwrap();
    let v2_text = everything_v2();
    let v2 = apache_avro::Schema::parse_str(&v2_text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let records = vec![
        record(0, wire(1, &v1, sample(&v1, true, T0, false))),
        record(1, wire(1, &v1, sample(&v1, true, T0 + HOUR_MS, false))),
        record(2, wire(2, &v2, sample(&v2, true, T0 + HOUR_MS + 5, true))),
        record(3, wire(2, &v2, sample(&v2, false, T0 + HOUR_MS + 6, true))),
    ];
    run(
        dir.path(),
        vec![(1, EVERYTHING.to_owned()), (2, v2_text)],
        records,
    )
    .await
    .unwrap();
    let files = read(dir.path());
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(files.len(), 3, "{paths:?}");
    // Hour 10 from v1; hour 11 once from v1, once from v2 (the schema change rolled).
    assert!(paths[0].contains("hour=10/00000-00000000000000000000-00000000000000000001"));
    assert!(paths[1].contains("hour=11/00000-00000000000000000000-00000000000000000001"));
    assert!(paths[2].contains("hour=11/00000-00000000000000000002-00000000000000000003"));
    assert!(files[2].1.schema().field_with_name("note").is_ok());
    assert!(files[0].1.schema().field_with_name("note").is_err());
    // Union by name: the files' schemas merge (a column shared by name has one type in
    // every file), and the merged table has the new column.
    let merged =
        arrow::datatypes::Schema::try_merge(files.iter().map(|(_, b)| b.schema().as_ref().clone()))
            .expect("the files' schemas merge by name");
    assert!(merged.field_with_name("note").is_ok());
    assert_eq!(
        merged.fields().len(),
        files[2].1.schema().fields().len(),
        "v2's columns are the union"
    );

    let entries = commit_entries(dir.path());
    assert_eq!(entries.len(), 2);
    assert_eq!(
        (
            entries[0].start_offset,
            entries[0].end_offset,
            entries[0].rows
        ),
        (0, 1, 2)
    );
    assert_eq!(
        (
            entries[1].start_offset,
            entries[1].end_offset,
            entries[1].schema_id
        ),
        (2, 3, 2)
    );
    assert_eq!(entries[0].files.len(), 2);
    // Nothing staged is left, and a second run over the same records writes nothing.
    assert!(
        !dir.path().join("t.v1/_eventbus/staging/00000").exists()
            || std::fs::read_dir(dir.path().join("t.v1/_eventbus/staging/00000"))
                .unwrap()
                .all(|d| {
                    std::fs::read_dir(d.unwrap().path())
                        .unwrap()
                        .next()
                        .is_none()
                })
    );
    let again = vec![
        record(2, wire(2, &v2, sample(&v2, true, T0 + HOUR_MS + 5, true))),
        record(3, wire(2, &v2, sample(&v2, false, T0 + HOUR_MS + 6, true))),
    ];
    run(
        dir.path(),
        vec![(1, EVERYTHING.to_owned()), (2, everything_v2())],
        again,
    )
    .await
    .unwrap();
    assert_eq!(
        read(dir.path()).len(),
        3,
        "records already in the table are not written again"
    );
}

#[test]
fn a_schema_that_cannot_map_fails_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let not_avro = r#"{"type":"record","name":"Bad","fields":[{"name":"x","type":"nope"}]}"#;
    let err = ParquetSink::new(
        ParquetSinkConfig::new(dir.path().to_str().unwrap()),
        lookup(vec![(5, not_avro.to_owned())]),
        &[5],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("schema id 5") && err.contains("nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_fail_their_record_and_publish_nothing_past_it() {
    let schema = apache_avro::Schema::parse_str(EVERYTHING).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = wire(1, &schema, sample(&schema, true, T0, false));
    let truncated = good.slice(..good.len() - 3);
    let records = vec![
        record(0, good.clone()),
        record(1, truncated),
        record(2, good.clone()),
    ];
    let err = run(dir.path(), vec![(1, EVERYTHING.to_owned())], records)
        .await
        .unwrap_err();
    assert!(err.contains("t.v1") && err.contains('1'), "{err}");
    // The record before the bad one is published; nothing after it is.
    assert_eq!(table_offsets(dir.path()), vec![0]);
    let unknown = vec![record(5, Bytes::from_static(&[0, 0, 0, 0, 42, 1, 2]))];
    let err = run(dir.path(), vec![(1, EVERYTHING.to_owned())], unknown)
        .await
        .unwrap_err();
    assert!(err.contains("42"), "{err}");
}

/// Delivers its records, then holds the partition until released: a writer that has
/// buffered records but not yet published them.
struct GatedSource {
    records: Vec<Record<Bytes>>,
    release: tokio::sync::oneshot::Receiver<()>,
}

impl eventbus_runtime::Source for GatedSource {
    type Item = Bytes;

    async fn run(
        self,
        dispatch: eventbus_runtime::Dispatch<Bytes>,
    ) -> Result<(), eventbus_runtime::RuntimeError> {
        let mut tps: Vec<eventbus_runtime::TopicPartition> = Vec::new();
        for r in self.records {
            let tp = r.topic_partition();
            if !tps.contains(&tp) {
                tps.push(tp.clone());
            }
            dispatch.deliver(&tp, vec![r]);
        }
        let _ = self.release.await;
        let finals = dispatch.revoke(&tps).await;
        dispatch.committed(&finals);
        Ok(())
    }
}

/// Runs records through `sink` to the end of the source.
async fn run_sink(sink: ParquetSink, records: Vec<Record<Bytes>>) -> Result<(), String> {
    Job::builder("t")
        .source(MemorySource::new(records))
        .sink(sink)
        .build()
        .map_err(|e| e.to_string())?
        .run(std::future::pending())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// An object store with faults: `overwrite` takes a create-only put as an overwrite
/// (one that ignores `If-None-Match`, as some S3-compatible servers do); `fail_copies`
/// fails every copy (a writer that dies while publishing).
/// `slow_copies` makes that many copies, the first ones, take 600 ms each (a store slow
/// to publish for a while).
#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn ObjectStore>,
    overwrite: bool,
    fail_copies: bool,
    slow_copies: std::sync::atomic::AtomicUsize,
}

impl Faulty {
    fn overwriting(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            overwrite: true,
            fail_copies: false,
            slow_copies: 0.into(),
        }
    }
}

impl std::fmt::Display for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &StorePath,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.overwrite && matches!(opts.mode, PutMode::Create) {
            opts.mode = PutMode::Overwrite;
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &StorePath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &StorePath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    async fn delete(&self, location: &StorePath) -> object_store::Result<()> {
        self.inner.delete(location).await
    }
    fn list(
        &self,
        prefix: Option<&StorePath>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&StorePath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy(&self, from: &StorePath, to: &StorePath) -> object_store::Result<()> {
        let slow = self
            .slow_copies
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if slow {
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        }
        if self.fail_copies {
            return Err(object_store::Error::Generic {
                store: "faulty",
                source: "the writer died while publishing".into(),
            });
        }
        self.inner.copy(from, to).await
    }
    async fn copy_if_not_exists(
        &self,
        from: &StorePath,
        to: &StorePath,
    ) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

/// B (a member that lost its session but still runs) buffers offsets 0..=14; A (the new
/// owner) publishes 0..=9 meanwhile; then B publishes. Each writer starts the way the
/// warehouse job does, with [`ParquetSink::check_store`]; a writer that fails it fails
/// the scenario. On `store`, under `dir`.
async fn two_writers_of_one_partition(
    dir: &std::path::Path,
    store: Arc<dyn ObjectStore>,
) -> Result<(), String> {
    let schema = apache_avro::Schema::parse_str(EVERYTHING).unwrap();
    let rec = |o: i64| {
        record(
            o,
            wire(1, &schema, sample(&schema, o % 2 == 0, T0 + o, false)),
        )
    };
    let writer = || {
        let mut config = ParquetSinkConfig::new(dir.to_str().unwrap());
        config.max_age = std::time::Duration::from_secs(600);
        ParquetSink::with_store(
            config,
            store.clone(),
            StorePath::default(),
            lookup(vec![(1, EVERYTHING.to_owned())]),
            &[1],
        )
        .unwrap()
    };
    let b = writer();
    b.check_store().await.map_err(|e| e.to_string())?;
    let (release, gate) = tokio::sync::oneshot::channel();
    let b_job = Job::builder("b")
        .source(GatedSource {
            records: (0..15).map(rec).collect(),
            release: gate,
        })
        .sink(b.clone())
        .build()
        .unwrap();
    let b_run = tokio::spawn(b_job.run(std::future::pending()));
    let tp = eventbus_runtime::TopicPartition::new("t.v1", 0);
    let started = std::time::Instant::now();
    while b.seen(&tp) != Some(14) {
        assert!(
            started.elapsed().as_secs() < 30,
            "B never buffered its records"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let a = writer();
    a.check_store().await.map_err(|e| e.to_string())?;
    run_sink(a, (0..10).map(rec).collect()).await?;
    release.send(()).unwrap();
    b_run.await.unwrap().map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_writers_of_one_partition_the_second_continues_after_the_first() {
    // B's commit entry from offset 0 must lose, and B must add only 10..=14.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    two_writers_of_one_partition(dir.path(), store)
        .await
        .unwrap();

    assert_eq!(
        table_offsets(dir.path()),
        (0..15).collect::<Vec<_>>(),
        "every offset once, in order"
    );
    let entries = commit_entries(dir.path());
    let ranges: Vec<(i64, i64)> = entries
        .iter()
        .map(|e| (e.start_offset, e.end_offset))
        .collect();
    assert_eq!(ranges, vec![(0, 9), (10, 14)]);
    assert_ne!(entries[0].writer, entries[1].writer);
    // Writer ids carry the process id and randomness: here both writers share a
    // process, and still differ.
    let pid = format!("{:x}-", std::process::id());
    for e in &entries {
        assert!(e.writer.starts_with(&pid), "{}", e.writer);
        assert!(e.writer.len() >= pid.len() + 16, "{}", e.writer);
    }
    // The probes left nothing behind.
    let probes = dir.path().join("_eventbus/probe");
    assert!(
        std::fs::read_dir(&probes).map_or(true, |mut d| d.next().is_none()),
        "{} is empty",
        probes.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_conditional_puts_is_refused_at_start() {
    // The same two writers on a store that overwrites where it should refuse: both
    // could win the commit entry from offset 0. The first writer to start refuses to,
    // naming the setting, and nothing is written.
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let err = two_writers_of_one_partition(dir.path(), Arc::new(Faulty::overwriting(local)))
        .await
        .unwrap_err();
    assert!(err.contains("does not honour conditional puts"), "{err}");
    assert!(err.contains("assume_single_writer = true"), "{err}");
    assert!(
        err.contains(dir.path().to_str().unwrap()),
        "names the root: {err}"
    );
    assert!(!dir.path().join("t.v1").exists(), "nothing is written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_publish_together_when_the_job_holds_its_row_budget() {
    // Rows wait unacknowledged until published; with a budget of 10 rows over four
    // partitions, files appear long before the maximum age (ten minutes here) and while
    // the source still holds every partition.
    let schema = apache_avro::Schema::parse_str(EVERYTHING).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = ParquetSinkConfig::new(dir.path().to_str().unwrap());
    config.max_age = std::time::Duration::from_secs(600);
    config.max_buffered_rows = 10;
    let sink = ParquetSink::new(config, lookup(vec![(1, EVERYTHING.to_owned())]), &[1]).unwrap();
    let records: Vec<Record<Bytes>> = (0..40)
        .map(|i| {
            let mut r = record(i / 4, wire(1, &schema, sample(&schema, true, T0, false)));
            r.partition = i32::try_from(i % 4).unwrap();
            r
        })
        .collect();
    let (release, gate) = tokio::sync::oneshot::channel();
    let job = Job::builder("budget")
        .source(GatedSource {
            records,
            release: gate,
        })
        .sink(sink)
        .build()
        .unwrap();
    let running = tokio::spawn(job.run(std::future::pending()));
    let started = std::time::Instant::now();
    let mut published = 0;
    while published < 30 {
        assert!(
            started.elapsed().as_secs() < 60,
            "only {published} of 40 rows published while the partitions were held"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        published = read(dir.path())
            .iter()
            .map(|(_, b)| b.num_rows())
            .sum::<usize>();
    }
    release.send(()).unwrap();
    running.await.unwrap().unwrap();
    let total: usize = read(dir.path()).iter().map(|(_, b)| b.num_rows()).sum();
    assert_eq!(total, 40, "every row once after the final flush");
}

/// Keeps every letter's offset, message and value, and resolves it at once.
#[derive(Clone, Default)]
struct Letters(Arc<std::sync::Mutex<Vec<(i64, String, Bytes)>>>);

impl eventbus_runtime::dead_letter::DeadLetterQueue for Letters {
    fn send(
        &self,
        letter: eventbus_runtime::dead_letter::DeadLetter,
        ack: eventbus_runtime::Ack,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        self.0
            .lock()
            .unwrap()
            .push((letter.record.offset, letter.message, letter.record.value));
        ack.done();
        Box::pin(async {})
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_read_again_after_its_letter_was_lost_is_dead_lettered_again() {
    // Offsets 0..=5 with two that cannot be decoded (2: truncated, 4: not the wire
    // format). The first run publishes 0, 1, 3, 5 and dead-letters 2 and 4. A crash
    // between the commit entry and the letters' acknowledgement loses the letters and
    // the Kafka commit: the second run reads 0..=5 again. Rows must not double, and 2
    // and 4 must go to the DLQ again, not be taken for rows of the table.
    let schema = apache_avro::Schema::parse_str(EVERYTHING).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = |o: i64| wire(1, &schema, sample(&schema, true, T0 + o, false));
    let truncated = good(2).slice(..good(2).len() - 3);
    let records = || {
        vec![
            record(0, good(0)),
            record(1, good(1)),
            record(2, truncated.clone()),
            record(3, good(3)),
            record(4, Bytes::from_static(b"{\"json\": true}")),
            record(5, good(5)),
        ]
    };
    let run_with_letters = |letters: Letters| {
        let config = ParquetSinkConfig::new(dir.path().to_str().unwrap());
        let sink =
            ParquetSink::new(config, lookup(vec![(1, EVERYTHING.to_owned())]), &[1]).unwrap();
        Job::builder("t")
            .source(MemorySource::new(records()))
            .dead_letters(letters)
            .sink(sink)
            .build()
            .unwrap()
            .run(std::future::pending())
    };
    let first = Letters::default();
    run_with_letters(first.clone()).await.unwrap();
    // Letters are written concurrently: compare them in offset order.
    let sorted = |l: &Letters| {
        let mut v = l.0.lock().unwrap().clone();
        v.sort();
        v
    };
    let offsets = |l: &Letters| sorted(l).iter().map(|(o, ..)| *o).collect::<Vec<_>>();
    assert_eq!(offsets(&first), vec![2, 4]);
    // The job kept no copy of the records (no operator, and the sink gives failed
    // records back): each letter holds the bytes the sink was sent.
    let values: Vec<Bytes> = sorted(&first).into_iter().map(|(.., v)| v).collect();
    assert_eq!(values, vec![truncated.clone(), records()[4].value.clone()]);
    assert_eq!(table_offsets(dir.path()), vec![0, 1, 3, 5]);
    let entries = commit_entries(dir.path());
    assert_eq!(entries.len(), 1);
    let skipped: Vec<i64> = entries[0].skipped.iter().map(|s| s.offset).collect();
    assert_eq!(skipped, vec![2, 4], "the entry names what it does not hold");
    assert!(entries[0].skipped[1].reason.contains("wire format"));

    let second = Letters::default();
    run_with_letters(second.clone()).await.unwrap();
    assert_eq!(offsets(&second), vec![2, 4], "dead-lettered again");
    assert_eq!(sorted(&second), sorted(&first), "with the same reasons");
    assert_eq!(table_offsets(dir.path()), vec![0, 1, 3, 5], "no row twice");
    assert_eq!(commit_entries(dir.path()).len(), 1, "nothing new committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_operator_that_changes_records_a_letter_holds_the_original() {
    // A map cuts offset 1's value short before the sink, which cannot decode it: the job
    // copies originals for such a chain, and the letter must hold the record as read,
    // not as the map left it.
    let schema = apache_avro::Schema::parse_str(EVERYTHING).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = |o: i64| wire(1, &schema, sample(&schema, true, T0 + o, false));
    let records: Vec<_> = (0..3).map(|o| record(o, good(o))).collect();
    let letters = Letters::default();
    let config = ParquetSinkConfig::new(dir.path().to_str().unwrap());
    let sink = ParquetSink::new(config, lookup(vec![(1, EVERYTHING.to_owned())]), &[1]).unwrap();
    Job::builder("t")
        .source(MemorySource::new(records))
        .map_record(|mut r: Record<Bytes>| {
            if r.offset == 1 {
                r.value = r.value.slice(..r.value.len() - 3);
            }
            r
        })
        .dead_letters(letters.clone())
        .sink(sink)
        .build()
        .unwrap()
        .run(std::future::pending())
        .await
        .unwrap();
    let got = letters.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, 1);
    assert_eq!(got[0].2, good(1), "the original, not the map's output");
    assert_eq!(table_offsets(dir.path()), vec![0, 2]);
}

/// A schema lookup (HTTP to a registry, with sleeps between tries) must not block the
/// runtime's thread: on a current-thread runtime a blocked lookup stops every timer.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_schema_lookup_does_not_freeze_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let schema = apache_avro::Schema::parse_str(EVERYTHING).unwrap();
    let slow: SchemaLookup = Arc::new(|id| {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        Ok((id == 1).then(|| EVERYTHING.to_owned()))
    });
    let sink = ParquetSink::new(
        ParquetSinkConfig::new(dir.path().to_str().unwrap()),
        slow,
        &[],
    )
    .expect("sink");
    let timer = tokio::spawn(async {
        let start = std::time::Instant::now();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        start.elapsed()
    });
    let record = Record::new(
        "t.v1",
        0,
        0,
        wire(1, &schema, sample(&schema, true, T0, false)),
    );
    let (ack, _outcome) = eventbus_runtime::Ack::channel(record.origin());
    eventbus_runtime::Sink::send(&sink, record, ack)
        .await
        .expect("send");
    let fired_after = timer.await.expect("timer");
    assert!(
        fired_after < std::time::Duration::from_millis(1000),
        "a 50 ms timer fired after {fired_after:?}: the lookup blocked the runtime"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watermark_counts_every_partition_of_the_topic() {
    // Partitions 0 and 1 publish rows an hour apart; the topic also has partition 2.
    // While 2 holds records and nothing is published from it, no hour is complete in
    // every partition; once 2 is known to be empty, the watermark is 0's and 1's.
    let schema = apache_avro::Schema::parse_str(EVERYTHING).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = |p: i32, o: i64, t: i64| {
        let mut r = Record::new(
            "t.v1",
            p,
            o,
            wire(1, &schema, sample(&schema, true, t, false)),
        );
        r.timestamp = Some(t);
        r
    };
    let mut config = ParquetSinkConfig::new(dir.path().to_str().unwrap());
    config
        .event_time_fields
        .insert("t.v1".into(), "ts_ms".into());
    let sink = ParquetSink::new(config, lookup(vec![(1, EVERYTHING.to_owned())]), &[1]).unwrap();
    let partition_two = Arc::new(std::sync::Mutex::new((0i64, 5i64)));
    let two = partition_two.clone();
    sink.set_partition_ends(Arc::new(move |topic: &str| {
        assert_eq!(topic, "t.v1");
        Ok([(0, (0, 3)), (1, (0, 3)), (2, *two.lock().unwrap())].into())
    }));
    let records = (0..3)
        .map(|o| rec(0, o, T0 + 2 * HOUR_MS + o))
        .chain((0..3).map(|o| rec(1, o, T0 + HOUR_MS + o)))
        .collect();
    run_sink(sink.clone(), records).await.unwrap();
    let watermark = dir.path().join("t.v1/_eventbus/watermark.json");

    sink.write_watermarks().await.unwrap();
    assert!(
        !watermark.exists(),
        "partition 2 has records and nothing published: no hour is complete everywhere"
    );

    *partition_two.lock().unwrap() = (5, 5);
    sink.write_watermarks().await.unwrap();
    let wm: eventbus_operators::sinks::parquet::Watermark =
        serde_json::from_slice(&std::fs::read(&watermark).unwrap()).unwrap();
    assert_eq!(wm.complete_before_ms, T0 + HOUR_MS, "partition 1's hour");
    let listed: Vec<(i32, i64)> = wm
        .partitions
        .iter()
        .map(|p| (p.partition, p.next_offset))
        .collect();
    assert_eq!(listed, vec![(0, 3), (1, 3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_takes_each_published_file_once_through_its_cursor() {
    use eventbus_operators::sinks::parquet::{Cursor, published_since};
    let schema = apache_avro::Schema::parse_str(EVERYTHING).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = |o: i64| record(o, wire(1, &schema, sample(&schema, true, T0 + o, false)));
    let store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    let root = StorePath::default();
    run(
        dir.path(),
        vec![(1, EVERYTHING.to_owned())],
        (0..5).map(rec).collect(),
    )
    .await
    .unwrap();
    let (first, cursor) = published_since(&store, &root, &[], &Cursor::default())
        .await
        .unwrap();
    assert_eq!(
        first
            .iter()
            .map(|f| (f.partition, f.start_offset, f.end_offset, f.rows))
            .collect::<Vec<_>>(),
        vec![(0, 0, 4, 5)]
    );
    assert!(
        dir.path().join(&first[0].path).exists(),
        "{}",
        first[0].path
    );
    // The cursor survives its text form; nothing new since it.
    let cursor = Cursor::decode(&cursor.encode()).unwrap();
    let (none, same) = published_since(&store, &root, &[], &cursor).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(same, cursor);
    run(
        dir.path(),
        vec![(1, EVERYTHING.to_owned())],
        (5..8).map(rec).collect(),
    )
    .await
    .unwrap();
    let (next, _) = published_since(&store, &root, &["t.v1".to_owned()], &cursor)
        .await
        .unwrap();
    assert_eq!(
        next.iter()
            .map(|f| (f.start_offset, f.end_offset))
            .collect::<Vec<_>>(),
        vec![(5, 7)]
    );
    assert!(Cursor::decode("v2:xyz").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_entry_whose_files_are_not_in_place_is_not_published_to_loaders() {
    // The writer commits its entry and dies before its files are copied: the commit
    // entry exists, its files do not, and loaders are not told about it. The next writer
    // rolls it forward, and only then is it published.
    use eventbus_operators::sinks::parquet::{Cursor, published_since};
    let schema = apache_avro::Schema::parse_str(EVERYTHING).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = |o: i64| record(o, wire(1, &schema, sample(&schema, true, T0 + o, false)));
    let local: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let sink = |store: Arc<dyn ObjectStore>| {
        ParquetSink::with_store(
            ParquetSinkConfig::new(dir.path().to_str().unwrap()),
            store,
            StorePath::default(),
            lookup(vec![(1, EVERYTHING.to_owned())]),
            &[1],
        )
        .unwrap()
    };
    let dying = Faulty {
        inner: local.clone(),
        overwrite: false,
        fail_copies: true,
        slow_copies: 0.into(),
    };
    let err = run_sink(sink(Arc::new(dying)), (0..5).map(rec).collect())
        .await
        .unwrap_err();
    assert!(err.contains("died while publishing"), "{err}");
    let entries = commit_entries(dir.path());
    assert_eq!(entries.len(), 1, "the entry was committed");
    assert!(
        !dir.path()
            .join("t.v1")
            .join(&entries[0].files[0].path)
            .exists()
    );
    let root = StorePath::default();
    let (files, cursor) = published_since(local.as_ref(), &root, &[], &Cursor::default())
        .await
        .unwrap();
    assert!(files.is_empty(), "loaders are told of no file: {files:?}");

    // The next writer recovers the partition: the files appear, then the entry.
    run_sink(sink(local.clone()), (0..6).map(rec).collect())
        .await
        .unwrap();
    let (files, _) = published_since(local.as_ref(), &root, &[], &cursor)
        .await
        .unwrap();
    let ranges: Vec<(i64, i64)> = files
        .iter()
        .map(|f| (f.start_offset, f.end_offset))
        .collect();
    assert_eq!(ranges, vec![(0, 4), (5, 5)]);
    for f in &files {
        assert!(dir.path().join(&f.path).exists(), "{}", f.path);
    }
}

/// Delivers records 0..10 of one partition, revokes it, then, as a new assignment,
/// delivers 0..15 again and revokes it at the end.
struct RevokedMidPublish;

impl eventbus_runtime::Source for RevokedMidPublish {
    type Item = Bytes;

    async fn run(
        self,
        dispatch: eventbus_runtime::Dispatch<Bytes>,
    ) -> Result<(), eventbus_runtime::RuntimeError> {
        let schema = apache_avro::Schema::parse_str(EVERYTHING).unwrap();
        let rec = |o: i64| record(o, wire(1, &schema, sample(&schema, true, T0 + o, false)));
        let tp = eventbus_runtime::TopicPartition::new("t.v1", 0);
        dispatch.assigned(std::slice::from_ref(&tp));
        dispatch.deliver(&tp, (0..10).map(rec).collect());
        // The file of 0..=4 is publishing (slowly) when the revoke comes.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let finals = dispatch.revoke(std::slice::from_ref(&tp)).await;
        dispatch.committed(&finals);
        dispatch.assigned(std::slice::from_ref(&tp));
        let from = finals.first().map_or(0, |(_, o)| *o);
        dispatch.deliver(&tp, (from..15).map(rec).collect());
        let finals = dispatch.revoke(std::slice::from_ref(&tp)).await;
        dispatch.committed(&finals);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_that_times_out_while_publishing_leaves_the_sink_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let slow = Faulty {
        inner: local,
        overwrite: false,
        fail_copies: false,
        // The first file's copy: the revoke's deadline passes while it publishes.
        slow_copies: 1.into(),
    };
    let mut config = ParquetSinkConfig::new(dir.path().to_str().unwrap());
    config.roll_rows = 5;
    let sink = ParquetSink::with_store(
        config,
        Arc::new(slow),
        StorePath::default(),
        lookup(vec![(1, EVERYTHING.to_owned())]),
        &[1],
    )
    .unwrap();
    let runtime = eventbus_runtime::RuntimeConfig {
        drain_timeout_ms: 200,
        ..eventbus_runtime::RuntimeConfig::default()
    };
    Job::builder("t")
        .config(runtime)
        .source(RevokedMidPublish)
        .sink(sink)
        .build()
        .unwrap()
        .run(std::future::pending())
        .await
        .expect("the job ends without an error");
    assert_eq!(
        table_offsets(dir.path()),
        (0..15).collect::<Vec<_>>(),
        "every offset once, in order"
    );
}
