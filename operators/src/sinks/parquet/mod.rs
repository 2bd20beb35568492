//! The Parquet sink: wire-format Avro records into Hive-partitioned Parquet tables on an
//! object store, each consumed record in exactly one published file.
//!
//! # Layout
//!
//! One table per source topic under the table root:
//!
//! ```text
//! <root>/<topic>/dt=YYYY-MM-DD/hour=HH/<partition>-<start offset>-<end offset>.parquet
//! <root>/<topic>/_eventbus/commits/<partition>/<start offset>.json   commit log
//! <root>/<topic>/_eventbus/progress/<partition>.json                 next offset, max event time
//! <root>/<topic>/_eventbus/watermark.json                            hours complete in every partition
//! <root>/<topic>/_eventbus/staging/...                               files not yet published
//! ```
//!
//! Columns are the writer schema's top-level fields (decoded straight into Arrow by
//! `arrow-avro`, no per-record value tree) plus `_topic`, `_partition`, `_offset` and
//! `_kafka_ts`. The hour comes from the configured event-time field, else the Kafka
//! timestamp. A record with a different writer schema id rolls the file, so each file
//! has one schema and the table reads with union-by-name readers.
//!
//! # The exactly-once protocol
//!
//! Files belong to one partition and hold a contiguous offset range. The truth of what is
//! in the table lives in the object store, never in the consumer's committed offsets; per
//! partition, commit entries form a chain where each starts at the previous one's end + 1.
//!
//! 1. **Recover** (first record of a partition after it is assigned): read the partition's
//!    newest commit entry; publish any of its files missing under their final names by
//!    copying the staged copy (roll forward); `next` = its end + 1. Records below `next`
//!    are already in the table and are acknowledged without being written again, except
//!    those the entry covering them lists as skipped, which are dead-lettered again.
//!    Staged leftovers below `next` are deleted.
//! 2. **Buffer** records of the partition, decoding each into Arrow as it arrives. A
//!    record that cannot be decoded is failed to the job's dead-letter queue and
//!    remembered as skipped.
//! 3. **Stage** (on row count, byte size, maximum age, a schema change, revoke, shutdown):
//!    write each hour's rows as a Parquet file under `_eventbus/staging/` with a name
//!    unique to this writer. Staged names do not end in `.parquet`, so no reader of
//!    `**/*.parquet` sees them.
//! 4. **Commit**: create `_eventbus/commits/<partition>/<next>.json` listing the final and
//!    staged names, offset range, row counts and the skipped offsets of the range (with
//!    why) — with a conditional put (create only),
//!    so of two writers that believe they own the partition exactly one wins. The loser
//!    re-reads the chain, acknowledges what the winner wrote, and stages the rest again.
//! 5. **Publish**: copy each staged file to its final name (a copy appears whole or not at
//!    all, on S3 and on the local filesystem alike), delete the staged copy, update the
//!    progress file.
//! 6. **Acknowledge** the records; the runtime then commits their offsets to Kafka.
//!
//! Crash cases (the job killed at any instruction, the store failing mid-write):
//! - before the commit entry exists: staged files are invisible leftovers; the records
//!   were not acknowledged, so they are read again from the committed offset and staged
//!   anew. Nothing published, nothing lost.
//! - after the commit entry, before or during publication: recovery finds the entry and
//!   copies the missing files. A final name is deterministic, so a copy done twice
//!   writes the same bytes to the same name.
//! - after publication, before the Kafka commit: the records come again; recovery says
//!   they are below `next`, and they are acknowledged without writing.
//! - a store that fails (unreachable, 5xx): the store client retries; a write that still
//!   fails fails the flush, nothing is acknowledged, the job stops without committing.
//! - a record dead-lettered, the job killed after the entry that covers it but before
//!   the broker acknowledged its letter: its offset was never committed, so it is read
//!   again below `next`; its entry lists it as skipped, so it is dead-lettered again
//!   (dead letters are at least once) instead of being taken for a row of the table.
//! - a rebalance: revoked partitions publish before their offsets are committed; the
//!   next owner recovers from the store, so it continues the chain exactly.
//!
//! Stores without conditional puts fall back to check-then-put for the commit entry,
//! which is exact as long as one writer owns a partition at a time (the consumer group
//! ensures that except for a member that lost its session while still writing).

mod encode;
mod table;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::Schema as ArrowSchema;
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use bytes::Bytes;
use eventbus_runtime::{Ack, Acks, ErrorClass, Record, Sink, SinkError, TopicPartition};
use object_store::ObjectStore;
use object_store::path::Path;
use tokio::sync::Mutex;

pub use encode::{COL_KAFKA_TS, COL_OFFSET, COL_PARTITION, COL_TOPIC};
use encode::{FileFormat, RowMeta};
pub use table::{CommitEntry, CommitFile, Progress, SkippedRecord, Watermark};
use table::{Committed, Covered, Table};

const SINK: &str = "parquet";

/// Looks a writer schema up by its registry id: the Avro schema JSON, `Ok(None)` when the
/// registry has no such id, `Err` when it could not answer.
pub type SchemaLookup = Arc<dyn Fn(u32) -> Result<Option<String>, String> + Send + Sync>;

/// Where and how the sink writes.
#[derive(Debug, Clone)]
pub struct ParquetSinkConfig {
    /// Table root: a local path or `file:///path` (the default store), or
    /// `s3://bucket/prefix`.
    pub table_root: String,
    /// Roll a partition's file at this many rows. Default 500,000. Keep it at or below
    /// the runtime's `max_in_flight_per_partition`: rows wait unacknowledged in the
    /// buffer, and a partition paused for being full would otherwise wait for the
    /// maximum age.
    pub roll_rows: usize,
    /// Publish every partition once all of them together hold this many rows. Default
    /// 1,000,000. Keep it below the runtime's `max_in_flight`, for the same reason.
    pub max_buffered_rows: usize,
    /// Roll at this many bytes of encoded input. Default 128 MiB.
    pub roll_bytes: usize,
    /// Publish whatever a partition holds once its oldest row is this old, even when no
    /// new record arrives. Default 60 s.
    pub max_age: Duration,
    /// Rows per Parquet row group. Default 128 Ki.
    pub row_group_rows: usize,
    /// zstd level. Default 1.
    pub zstd_level: i32,
    /// Per topic, the field giving each row's event time (a timestamp or a long of
    /// milliseconds) for the `dt=/hour=` folders; topics not listed use the Kafka
    /// timestamp.
    pub event_time_fields: HashMap<String, String>,
    /// S3 settings for `s3://` roots.
    pub s3: S3Config,
}

impl ParquetSinkConfig {
    /// Defaults for a table root.
    pub fn new(table_root: impl Into<String>) -> Self {
        Self {
            table_root: table_root.into(),
            roll_rows: 500_000,
            max_buffered_rows: 1_000_000,
            roll_bytes: 128 << 20,
            max_age: Duration::from_secs(60),
            row_group_rows: 128 * 1024,
            zstd_level: 1,
            event_time_fields: HashMap::new(),
            s3: S3Config::default(),
        }
    }
}

/// S3 settings. Unset values come from the usual AWS environment variables
/// (`AWS_ENDPOINT_URL` or `AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, ...). An `http://` endpoint is allowed without TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000` for a local server.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
}

/// Opens the object store a table root names, and the path of the root inside it.
///
/// # Errors
/// The URL is not a path, `file://` or `s3://` URL, or the store cannot be built.
pub fn open_store(
    table_root: &str,
    s3: &S3Config,
) -> Result<(Arc<dyn ObjectStore>, Path), SinkError> {
    let bad = |reason: String| flush_error(format!("table root {table_root:?}: {reason}"));
    if let Some(rest) = table_root.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket in the s3:// URL".into()));
        }
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(e) = &s3.endpoint {
            b = b.with_endpoint(e);
        }
        // The endpoint as the builder resolved it: from the config, `AWS_ENDPOINT_URL`
        // or `AWS_ENDPOINT`. A plain-http endpoint is a local or private server.
        let endpoint = b
            .get_config_value(&object_store::aws::AmazonS3ConfigKey::Endpoint)
            .unwrap_or_default();
        if endpoint.starts_with("http://") {
            b = b.with_allow_http(true);
        }
        if let Some(r) = &s3.region {
            b = b.with_region(r);
        }
        if let Some(k) = &s3.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &s3.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        let store = b.build().map_err(|e| bad(e.to_string()))?;
        return Ok((Arc::new(store), Path::from(prefix)));
    }
    let dir = table_root.strip_prefix("file://").unwrap_or(table_root);
    if dir.contains("://") {
        return Err(bad(
            "only local paths, file:// and s3:// are supported".into()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| bad(e.to_string()))?;
    Ok((Arc::new(store), Path::default()))
}

/// The Arrow schema rows of `avro_schema_json` get, before the Kafka columns. Fails,
/// naming the schema, when a construct cannot be mapped.
///
/// # Errors
/// The schema is not valid Avro or holds a construct arrow-avro cannot map.
pub fn arrow_schema_of(id: u32, avro_schema_json: &str) -> Result<Arc<ArrowSchema>, String> {
    let decoder = build_decoder(&[(id, avro_schema_json.to_owned())], Some(id), 16)?;
    Ok(decoder.schema())
}

fn build_decoder(
    schemas: &[(u32, String)],
    active: Option<u32>,
    batch_rows: usize,
) -> Result<Decoder, String> {
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    for (id, json) in schemas {
        store
            .set(Fingerprint::Id(*id), AvroSchema::new(json.clone()))
            .map_err(|e| format!("schema id {id}: {e}"))?;
    }
    let mut b = ReaderBuilder::new()
        .with_writer_schema_store(store)
        .with_batch_size(batch_rows);
    if let Some(id) = active {
        b = b.with_active_fingerprint(Fingerprint::Id(id));
    }
    b.build_decoder().map_err(|e| match active {
        Some(id) => format!("schema id {id} cannot be mapped to Arrow: {e}"),
        None => format!("cannot build the Avro decoder: {e}"),
    })
}

/// Decodes wire-format records of one writer schema straight into Arrow and writes them
/// as one Parquet file in memory, with the Kafka columns (offsets `0..n`): the sink's
/// per-file work without the store, for benchmarks and tools.
///
/// # Errors
/// The schema cannot be mapped, a record does not decode, or Parquet writing fails.
pub fn wire_to_parquet(
    id: u32,
    avro_schema_json: &str,
    records: &[Bytes],
    zstd_level: i32,
) -> Result<Vec<u8>, String> {
    let mut decoder = build_decoder(
        &[(id, avro_schema_json.to_owned())],
        Some(id),
        records.len() + 1,
    )?;
    let mut meta = RowMeta::default();
    for (i, r) in records.iter().enumerate() {
        let n = decoder.decode(r).map_err(|e| format!("record {i}: {e}"))?;
        if n != r.len() {
            return Err(format!("record {i}: {} of {} bytes read", n, r.len()));
        }
        meta.offsets.push(i as i64);
        meta.kafka_ts.push(None);
    }
    let batch = decoder
        .flush()
        .map_err(|e| e.to_string())?
        .ok_or("no records")?;
    let full = encode::with_kafka_columns(&batch, "bench", 0, &meta).map_err(|e| e.to_string())?;
    encode::parquet_bytes(
        &full,
        FileFormat {
            row_group_rows: 128 * 1024,
            zstd_level,
        },
    )
}

/// One partition's buffered records.
struct PartBuf {
    tp: TopicPartition,
    table: Table,
    /// `None` until recovered; then the first offset not yet in the table, if known.
    next: Option<Option<i64>>,
    schema_id: Option<u32>,
    decoder: Option<Decoder>,
    raw: Vec<Bytes>,
    meta: RowMeta,
    acks: Acks,
    bytes: usize,
    oldest: Option<Instant>,
    /// Highest offset received, for callers waiting to catch up.
    seen: Option<i64>,
    /// Records failed to the dead-letter queue since the last commit entry: the next
    /// entry lists them as skipped.
    failed: Vec<SkippedRecord>,
    /// What the commit chain says about the offsets being read again below `next`.
    covered: Option<Covered>,
}

impl PartBuf {
    fn rows(&self) -> usize {
        self.acks.len()
    }

    /// Removes the first `n` buffered records and returns their acknowledgements. The
    /// decoder is left alone: callers flush, rebuild or drop it.
    fn take_rows(&mut self, n: usize) -> Acks {
        let n = n.min(self.rows());
        self.raw.drain(..n);
        self.meta.offsets.drain(..n);
        self.meta.kafka_ts.drain(..n);
        self.bytes = self.raw.iter().map(Bytes::len).sum();
        if self.raw.is_empty() {
            self.oldest = None;
        }
        self.acks.take_first(n)
    }
}

struct Inner {
    config: ParquetSinkConfig,
    store: Arc<dyn ObjectStore>,
    root: Path,
    lookup: SchemaLookup,
    /// Writer schemas known so far, by id.
    schemas: StdMutex<Vec<(u32, String)>>,
    /// Looked up for every record, so hashed with foldhash rather than SipHash.
    parts: StdMutex<HashMap<TopicPartition, Arc<Mutex<PartBuf>>, foldhash::fast::RandomState>>,
    tables: StdMutex<HashMap<String, Table>>,
    writer: String,
    timer: OnceLock<tokio::task::JoinHandle<()>>,
    /// Something was published since the watermarks were last written.
    dirty: AtomicBool,
    /// Rows buffered in all partitions together.
    buffered: AtomicUsize,
}

/// Writes wire-format Avro records into Parquet tables exactly once; see the module
/// docs for the layout and the protocol.
#[derive(Clone)]
pub struct ParquetSink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ParquetSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetSink")
            .field("table_root", &self.inner.config.table_root)
            .finish_non_exhaustive()
    }
}

impl ParquetSink {
    /// A sink writing under `config.table_root`. `lookup` resolves writer schema ids;
    /// `initial` lists the ids to check up front: each must map to Arrow, or this fails
    /// naming the schema.
    ///
    /// # Errors
    /// The store cannot be opened, or a schema in `initial` cannot be mapped.
    pub fn new(
        config: ParquetSinkConfig,
        lookup: SchemaLookup,
        initial: &[u32],
    ) -> Result<Self, SinkError> {
        let (store, root) = open_store(&config.table_root, &config.s3)?;
        let mut schemas = Vec::new();
        for id in initial {
            let json = lookup(*id)
                .map_err(|e| flush_error(format!("schema id {id}: {e}")))?
                .ok_or_else(|| flush_error(format!("schema id {id} is not registered")))?;
            arrow_schema_of(*id, &json).map_err(flush_error)?;
            schemas.push((*id, json));
        }
        // The process id tells writers on one host apart, and 64 random bits writers
        // on different hosts (or a restarted process that got the same id): two
        // writers of one partition must never stage under the same name.
        let writer = format!("{:x}-{:016x}", std::process::id(), rand::random::<u64>());
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                root,
                lookup,
                schemas: StdMutex::new(schemas),
                parts: StdMutex::new(HashMap::default()),
                tables: StdMutex::new(HashMap::new()),
                writer,
                timer: OnceLock::new(),
                dirty: AtomicBool::new(false),
                buffered: AtomicUsize::new(0),
            }),
        })
    }

    /// Checks that the table root can be listed: a missing bucket, refused credentials
    /// or a root that is not a folder stop the job at start, naming the root, instead of
    /// at its first record.
    ///
    /// # Errors
    /// The store refused the listing, after its own retries.
    pub async fn check_store(&self) -> Result<(), SinkError> {
        self.inner
            .store
            .list_with_delimiter(Some(&self.inner.root))
            .await
            .map(|_| ())
            .map_err(|e| {
                flush_error(format!(
                    "table root {}: {}",
                    self.inner.config.table_root,
                    describe_store_error(&e.to_string())
                ))
            })
    }

    /// The table of `topic`.
    fn table(&self, topic: &str) -> Table {
        let mut tables = lock(&self.inner.tables);
        tables
            .entry(topic.to_owned())
            .or_insert_with(|| {
                Table::new(
                    self.inner.store.clone(),
                    self.inner.root.child(topic),
                    topic,
                )
            })
            .clone()
    }

    /// The highest offset this sink has received for a partition, buffered or written.
    pub fn seen(&self, tp: &TopicPartition) -> Option<i64> {
        let part = lock(&self.inner.parts).get(tp).cloned()?;
        part.try_lock().ok().and_then(|p| p.seen)
    }

    /// Recomputes each table's watermark file.
    ///
    /// # Errors
    /// The store could not be read or written.
    pub async fn write_watermarks(&self) -> Result<(), SinkError> {
        let tables: Vec<Table> = lock(&self.inner.tables).values().cloned().collect();
        for t in tables {
            t.write_watermark().await.map_err(store_error)?;
        }
        Ok(())
    }

    fn part(&self, tp: &TopicPartition) -> Arc<Mutex<PartBuf>> {
        let mut parts = lock(&self.inner.parts);
        if let Some(p) = parts.get(tp) {
            return p.clone();
        }
        let p = Arc::new(Mutex::new(PartBuf {
            tp: tp.clone(),
            table: self.table(&tp.topic),
            next: None,
            schema_id: None,
            decoder: None,
            raw: Vec::new(),
            meta: RowMeta::default(),
            acks: Acks::new(),
            bytes: 0,
            oldest: None,
            seen: None,
            failed: Vec::new(),
            covered: None,
        }));
        parts.insert(tp.clone(), p.clone());
        p
    }

    /// Starts, once, the task that publishes aged partitions and keeps the watermarks
    /// current. It holds the sink weakly and ends with it.
    fn start_timer(&self) {
        if self.inner.timer.get().is_some() {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let tick = (self.inner.config.max_age / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let watermark_every = self.inner.config.max_age.max(Duration::from_secs(1));
        let _ = self.inner.timer.get_or_init(|| {
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(tick);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last_watermark = Instant::now();
                loop {
                    interval.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let sink = ParquetSink { inner };
                    sink.publish_aged().await;
                    if last_watermark.elapsed() >= watermark_every
                        && sink.inner.dirty.swap(false, Ordering::Relaxed)
                    {
                        last_watermark = Instant::now();
                        if let Err(e) = sink.write_watermarks().await {
                            tracing::warn!(error = %e, "could not write the table watermarks");
                        }
                    }
                }
            })
        });
    }

    /// Publishes every partition whose oldest buffered row reached the maximum age.
    async fn publish_aged(&self) {
        let max_age = self.inner.config.max_age;
        self.publish_where(|p| p.oldest.is_some_and(|t| t.elapsed() >= max_age))
            .await;
    }

    /// Publishes every partition `due` picks. A partition busy sending is skipped: it
    /// rolls by itself (and the caller's own partition is busy with the caller).
    async fn publish_where(&self, due: impl Fn(&PartBuf) -> bool) {
        let parts: Vec<_> = lock(&self.inner.parts).values().cloned().collect();
        for part in parts {
            let Ok(mut p) = part.try_lock() else { continue };
            if due(&p)
                && let Err(e) = self.publish(&mut p).await
            {
                tracing::error!(error = %e, "publishing a Parquet file failed");
            }
        }
    }

    /// Removes a partition's first `n` buffered records, keeping the job-wide count.
    fn take_rows(&self, p: &mut PartBuf, n: usize) -> Acks {
        let acks = p.take_rows(n);
        self.inner.buffered.fetch_sub(acks.len(), Ordering::Relaxed);
        acks
    }

    /// Recovers the partition's position from the table if not done since assignment.
    async fn recover(&self, p: &mut PartBuf) -> Result<Option<i64>, SinkError> {
        if let Some(next) = p.next {
            return Ok(next);
        }
        let next = match p
            .table
            .last_commit(p.tp.partition)
            .await
            .map_err(store_error)?
        {
            Some(entry) => {
                let copied = p.table.roll_forward(&entry).await.map_err(store_error)?;
                if copied > 0 {
                    tracing::info!(
                        topic = %p.tp.topic, partition = p.tp.partition, files = copied,
                        start = entry.start_offset, end = entry.end_offset,
                        "rolled a committed Parquet file forward"
                    );
                }
                Some(entry.end_offset + 1)
            }
            None => None,
        };
        if let Some(n) = next {
            p.table
                .clean_staging(p.tp.partition, n)
                .await
                .map_err(store_error)?;
        }
        p.next = Some(next);
        Ok(next)
    }

    /// Why the record at `offset` (below the partition's `next`) is not in the table, if
    /// its commit entry lists it as skipped. Records come in order, so one lookup serves
    /// a whole entry's range.
    async fn skipped_reason(
        &self,
        p: &mut PartBuf,
        offset: i64,
    ) -> Result<Option<String>, SinkError> {
        if !p
            .covered
            .as_ref()
            .is_some_and(|c| (c.start..=c.end).contains(&offset))
        {
            p.covered = Some(
                p.table
                    .covering(p.tp.partition, offset)
                    .await
                    .map_err(store_error)?,
            );
        }
        Ok(p.covered.as_ref().and_then(|c| {
            c.skipped
                .iter()
                .find(|f| f.offset == offset)
                .map(|f| f.reason.clone())
        }))
    }

    /// The known schemas, `id`'s included when the registry has it.
    async fn known_schemas(&self, id: u32) -> Result<Vec<(u32, String)>, SinkError> {
        {
            let schemas = lock(&self.inner.schemas);
            if schemas.iter().any(|(k, _)| *k == id) {
                return Ok(schemas.clone());
            }
        }
        // Not under the lock: a registry lookup may take seconds (retries), and other
        // partitions' records must not wait on it for schemas already known. Not on a
        // runtime worker either: it blocks on HTTP and sleeps between tries, and a
        // blocked worker freezes the timers (revoke deadlines, the maximum file age).
        let lookup = self.inner.lookup.clone();
        let json = tokio::task::spawn_blocking(move || lookup(id))
            .await
            .map_err(|e| flush_error(format!("looking up schema id {id}: {e}")))?
            .map_err(|e| flush_error(format!("looking up schema id {id}: {e}")))?;
        let mut schemas = lock(&self.inner.schemas);
        if let Some(json) = json
            && !schemas.iter().any(|(k, _)| *k == id)
        {
            schemas.push((id, json));
        }
        Ok(schemas.clone())
    }

    /// Whether a record with writer schema `id` needs the partition's decoder built anew.
    fn needs_decoder(p: &PartBuf, id: u32) -> bool {
        p.decoder.is_none() || p.schema_id != Some(id)
    }

    /// Feeds one record's bytes to the partition's decoder, built from `schemas` (the
    /// known schemas, `id`'s included when the registry has it) when
    /// [`Self::needs_decoder`]. On a bad record the decoder is rebuilt from the good
    /// records, so the buffer stays consistent.
    fn decode_into(
        &self,
        p: &mut PartBuf,
        id: u32,
        schemas: Option<Vec<(u32, String)>>,
        bytes: &[u8],
    ) -> Result<(), String> {
        if let Some(schemas) = schemas {
            if !schemas.iter().any(|(k, _)| *k == id) {
                return Err(format!("schema id {id} is not found in the registry"));
            }
            p.decoder = Some(build_decoder(
                &schemas,
                Some(id),
                self.inner.config.roll_rows + 1,
            )?);
            p.schema_id = Some(id);
        }
        let decoder = p.decoder.as_mut().ok_or("no decoder")?;
        let outcome = decoder.decode(bytes);
        match outcome {
            Ok(n) if n == bytes.len() => Ok(()),
            other => {
                let reason = match other {
                    Ok(n) => format!(
                        "the body does not match schema id {id}: it is {} bytes but the schema read {n}",
                        bytes.len()
                    ),
                    Err(e) => format!("the body does not match schema id {id}: {e}"),
                };
                self.rebuild(p)
                    .map_err(|e| format!("{reason}; then: {e}"))?;
                Err(reason)
            }
        }
    }

    /// A fresh decoder holding the buffered records again.
    fn rebuild(&self, p: &mut PartBuf) -> Result<(), String> {
        let Some(id) = p.schema_id else {
            return Ok(());
        };
        // The partition's schema was looked up when its decoder was first built.
        let schemas = lock(&self.inner.schemas).clone();
        let mut d = build_decoder(&schemas, Some(id), self.inner.config.roll_rows + 1)?;
        for raw in &p.raw {
            d.decode(raw).map_err(|e| e.to_string())?;
        }
        p.decoder = Some(d);
        Ok(())
    }

    /// Stages, commits and publishes what a partition holds, then acknowledges it.
    async fn publish(&self, p: &mut PartBuf) -> Result<(), SinkError> {
        let result = self.try_publish(p).await;
        if let Err(e) = &result {
            self.take_rows(p, usize::MAX)
                .fail(|| flush_error(e.to_string()));
            p.decoder = None;
            // Whatever happened, the table is the truth: read it again before writing.
            p.next = None;
        }
        result
    }

    async fn try_publish(&self, p: &mut PartBuf) -> Result<(), SinkError> {
        for _attempt in 0..8 {
            if p.rows() == 0 {
                return Ok(());
            }
            let batch = p
                .decoder
                .as_mut()
                .ok_or_else(|| flush_error("rows without a decoder"))?
                .flush()
                .map_err(|e| flush_error(e.to_string()))?
                .ok_or_else(|| flush_error("the decoder holds no rows"))?;
            match self.write_files(p, &batch).await? {
                Committed::Yes => {
                    self.take_rows(p, usize::MAX).done();
                    self.inner.dirty.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Committed::Conflict => {
                    // Another writer committed from the same offset: take its word (what
                    // its entry covers is in the table), and stage the rest again.
                    p.next = None;
                    let next = self.recover(p).await?.unwrap_or(i64::MIN);
                    tracing::warn!(
                        topic = %p.tp.topic, partition = p.tp.partition, next,
                        "another writer committed first; continuing after its entry"
                    );
                    p.failed.retain(|f| f.offset >= next);
                    let covered = p.meta.offsets.partition_point(|o| *o < next);
                    self.take_rows(p, covered).done();
                    self.rebuild(p).map_err(flush_error)?;
                }
            }
        }
        Err(flush_error("gave up after repeated commit conflicts"))
    }

    /// Steps 3–5 of the protocol for one decoded batch.
    async fn write_files(
        &self,
        p: &mut PartBuf,
        batch: &RecordBatch,
    ) -> Result<Committed, SinkError> {
        let tp = p.tp.clone();
        let next = self.recover(p).await?;
        let first = *p
            .meta
            .offsets
            .first()
            .ok_or_else(|| flush_error("no rows"))?;
        let end = *p
            .meta
            .offsets
            .last()
            .ok_or_else(|| flush_error("no rows"))?;
        let start = next.unwrap_or(first);
        let full = encode::with_kafka_columns(batch, &tp.topic, tp.partition, &p.meta)
            .map_err(|e| flush_error(e.to_string()))?;
        let slices = encode::split_by_hour(
            &full,
            self.inner
                .config
                .event_time_fields
                .get(tp.topic.as_ref())
                .map(String::as_str),
        )
        .map_err(|e| flush_error(e.to_string()))?;
        let format = FileFormat {
            row_group_rows: self.inner.config.row_group_rows,
            zstd_level: self.inner.config.zstd_level,
        };
        // Encoding (zstd) takes tens of milliseconds per file: off the runtime's workers,
        // whose timers must keep running.
        let batches: Vec<RecordBatch> = slices.iter().map(|s| s.batch.clone()).collect();
        let encoded = tokio::task::spawn_blocking(move || {
            batches
                .iter()
                .map(|b| encode::parquet_bytes(b, format))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| flush_error(format!("the encoding task ended: {e}")))?
        .map_err(flush_error)?;
        let mut files = Vec::with_capacity(slices.len());
        let mut max_event = i64::MIN;
        for ((n, slice), bytes) in slices.iter().enumerate().zip(encoded) {
            let staged = Table::staged_key(tp.partition, start, &self.inner.writer, n);
            let size = bytes.len() as u64;
            p.table.put(&staged, bytes).await.map_err(store_error)?;
            files.push(CommitFile {
                path: Table::final_key(&slice.dt, slice.hour, tp.partition, start, end),
                staged,
                rows: slice.batch.num_rows() as u64,
                bytes: size,
            });
            max_event = max_event.max(slice.max_event_ms);
        }
        let entry = CommitEntry {
            topic: tp.topic.to_string(),
            partition: tp.partition,
            start_offset: start,
            end_offset: end,
            rows: p.rows() as u64,
            schema_id: p.schema_id.unwrap_or_default(),
            max_event_time_ms: max_event,
            files,
            committed_at_ms: eventbus_runtime::dead_letter::now_ms(),
            writer: self.inner.writer.clone(),
            skipped: p
                .failed
                .iter()
                .filter(|f| (start..=end).contains(&f.offset))
                .cloned()
                .collect(),
        };
        if let Committed::Conflict = p.table.commit(&entry).await.map_err(store_error)? {
            return Ok(Committed::Conflict);
        }
        p.table.publish(&entry).await.map_err(store_error)?;
        for f in &entry.files {
            match p.table.store.delete(&p.table.path(&f.staged)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "could not delete a staged file"),
            }
        }
        p.next = Some(Some(end + 1));
        p.failed.retain(|f| f.offset > end);
        p.table
            .write_progress(&Progress {
                partition: tp.partition,
                next_offset: end + 1,
                max_event_time_ms: max_event,
            })
            .await
            .map_err(store_error)?;
        tracing::debug!(
            topic = %tp.topic, partition = tp.partition, start, end, rows = entry.rows,
            files = entry.files.len(), "published Parquet files"
        );
        Ok(Committed::Yes)
    }

    async fn publish_all(&self, which: Option<&[TopicPartition]>) -> Result<(), SinkError> {
        let parts: Vec<_> = lock(&self.inner.parts)
            .iter()
            .filter(|(tp, _)| which.is_none_or(|w| w.contains(tp)))
            .map(|(_, p)| p.clone())
            .collect();
        // One task per partition: encoding is the expensive part, and partitions are
        // independent, so a revoke or shutdown with many partitions uses every core.
        let tasks: Vec<_> = parts
            .into_iter()
            .map(|part| {
                let sink = self.clone();
                tokio::spawn(async move {
                    let mut p = part.lock().await;
                    sink.publish(&mut p).await
                })
            })
            .collect();
        let mut first_error = None;
        for task in tasks {
            let result = task
                .await
                .unwrap_or_else(|e| Err(flush_error(format!("a publish task ended: {e}"))));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        if let Some(which) = which {
            let mut map = lock(&self.inner.parts);
            for tp in which {
                map.remove(tp);
            }
        }
        if self.inner.dirty.swap(false, Ordering::Relaxed)
            && let Err(e) = self.write_watermarks().await
        {
            tracing::warn!(error = %e, "could not write the table watermarks");
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Sink<Bytes> for ParquetSink {
    async fn send(&self, record: Record<Bytes>, ack: Ack) -> Result<(), SinkError> {
        self.start_timer();
        let tp = TopicPartition::new(record.topic.clone(), record.partition);
        let part = self.part(&tp);
        let mut p = part.lock().await;
        p.seen = Some(p.seen.map_or(record.offset, |s| s.max(record.offset)));
        // Fails a record to the dead-letter queue; its origin is built only then, not for
        // every record.
        let bad = |ack: Ack, reason: String| {
            let origin = ack.origin();
            ack.fail(SinkError::Delivery {
                sink: SINK,
                origin,
                reason,
                class: ErrorClass::Permanent,
            });
        };
        // The rare paths (recovery, reading the commit chain, publishing) are boxed: their
        // futures hold the store's, and inline they made this per-record future kilobytes
        // large, copied on every call.
        let next = match p.next {
            Some(next) => next,
            None => Box::pin(self.recover(&mut p)).await?,
        };
        if let Some(next) = next
            && record.offset < next
        {
            // In the table, or dead-lettered by the writer of the entry that covers it
            // (whose letter may have been lost with that writer): dead-letter it again.
            match Box::pin(self.skipped_reason(&mut p, record.offset)).await? {
                Some(reason) => bad(ack, reason),
                None => ack.done(),
            }
            return Ok(());
        }
        // A record that cannot be decoded: dead-lettered, and listed as skipped by the
        // next commit entry.
        let skip = |p: &mut PartBuf, ack: Ack, reason: String| {
            p.failed.push(SkippedRecord {
                offset: record.offset,
                reason: reason.clone(),
            });
            bad(ack, reason);
        };
        let bytes = &record.value;
        if bytes.len() < 5 || bytes[0] != 0 {
            let reason = "not in the wire format (magic byte 0 and a 4-byte schema id)";
            skip(&mut p, ack, reason.to_owned());
            return Ok(());
        }
        let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        if p.rows() > 0 && p.schema_id != Some(id) {
            // A new writer schema rolls the file: one schema per file.
            Box::pin(self.publish(&mut p)).await?;
        }
        let schemas = if Self::needs_decoder(&p, id) {
            match Box::pin(self.known_schemas(id)).await {
                Ok(schemas) => Some(schemas),
                Err(e) => {
                    // A registry that cannot answer says nothing about the record, so it
                    // is not dead-lettered: a flush error on its ack stops the job, and
                    // nothing from here on is acknowledged.
                    ack.fail(e);
                    return Ok(());
                }
            }
        } else {
            None
        };
        if let Err(reason) = self.decode_into(&mut p, id, schemas, bytes) {
            skip(&mut p, ack, reason);
            return Ok(());
        }
        p.bytes += bytes.len();
        p.raw.push(record.value.clone());
        p.meta.offsets.push(record.offset);
        p.meta.kafka_ts.push(record.timestamp);
        p.acks.push(ack);
        let buffered = self.inner.buffered.fetch_add(1, Ordering::Relaxed) + 1;
        if p.oldest.is_none() {
            p.oldest = Some(Instant::now());
        }
        if p.rows() >= self.inner.config.roll_rows || p.bytes >= self.inner.config.roll_bytes {
            Box::pin(self.publish(&mut p)).await?;
        } else if buffered >= self.inner.config.max_buffered_rows {
            // The job's memory bound: publish this partition and every idle one, so the
            // runtime never pauses everything while rows wait for the maximum age.
            Box::pin(self.publish(&mut p)).await?;
            drop(p);
            Box::pin(self.publish_where(|p| p.rows() > 0)).await;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.publish_all(None).await
    }

    async fn partitions_revoked(&self, partitions: &[TopicPartition]) -> Result<(), SinkError> {
        self.publish_all(Some(partitions)).await
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn flush_error(reason: impl Into<String>) -> SinkError {
    SinkError::Flush {
        sink: SINK,
        reason: reason.into(),
    }
}

fn store_error(e: object_store::Error) -> SinkError {
    flush_error(describe_store_error(&e.to_string()))
}

/// An object store error as an operator should read it: the store's own text, led by
/// what it means when that is one of the usual set-up mistakes.
fn describe_store_error(text: &str) -> String {
    // S3 error bodies come on lines of their own; one error, one line.
    let text = &text.split_whitespace().collect::<Vec<_>>().join(" ");
    let hint = if text.contains("NoSuchBucket") {
        Some("the bucket does not exist")
    } else if text.contains("169.254.169.254") {
        // object_store falls back to the EC2 instance metadata service when no
        // credentials are configured; off EC2 that fails with an unrelated-looking URL.
        Some(
            "no S3 credentials were found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
             or access_key_id and secret_access_key in [warehouse.s3]), so the EC2 instance \
             metadata service was asked and did not answer",
        )
    } else if text.contains("InvalidAccessKeyId") || text.contains("SignatureDoesNotMatch") {
        Some("the S3 credentials were refused")
    } else {
        None
    };
    match hint {
        Some(h) => format!("object store: {h}: {text}"),
        None => format!("object store: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_lead_with_the_set_up_mistake_they_mean() {
        let missing = describe_store_error(
            "Generic S3 error: ... 404 Not Found: <Error><Code>NoSuchBucket</Code><BucketName>b1</BucketName></Error>",
        );
        assert!(
            missing.starts_with("object store: the bucket does not exist: "),
            "{missing}"
        );
        assert!(
            missing.contains("b1"),
            "the store's own text stays: {missing}"
        );
        let no_creds = describe_store_error(
            "Generic S3 error: Error performing PUT http://169.254.169.254/latest/api/token: 403",
        );
        assert!(
            no_creds.contains("no S3 credentials were found"),
            "{no_creds}"
        );
        assert!(no_creds.contains("AWS_ACCESS_KEY_ID"), "{no_creds}");
        let refused = describe_store_error("... <Code>InvalidAccessKeyId</Code> ...");
        assert!(refused.contains("credentials were refused"), "{refused}");
        assert_eq!(
            describe_store_error("timed out:\n<Error/>"),
            "object store: timed out: <Error/>"
        );
    }
}
