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
//! <root>/<topic>/_eventbus/published/<partition>/<start offset>.json the entries whose files are in place (for loaders)
//! <root>/<topic>/_eventbus/progress/<partition>/<next offset>.json   next offset, max event time (highest name)
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
//!    record that cannot be decoded, or whose body is not exactly one well-formed value
//!    of its schema (`eventbus_schemas::validate`, checked first: arrow-avro finds some
//!    faults only when the file is built), is failed to the job's dead-letter queue and
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
//!    all, on S3 and on the local filesystem alike), then create the entry's published
//!    entry (`_eventbus/published/`, what loaders read: see `loader`), delete the staged
//!    copy, write the progress record.
//! 6. **Acknowledge** the records; the runtime then commits their offsets to Kafka.
//!
//! Crash cases (the job killed at any instruction, the store failing mid-write):
//! - before the commit entry exists: staged files are invisible leftovers; the records
//!   were not acknowledged, so they are read again from the committed offset and staged
//!   anew. Nothing published, nothing lost.
//! - after the commit entry, before or during publication: recovery finds the entry,
//!   copies the missing files and then creates its published entry. A final name is
//!   deterministic, so a copy done twice writes the same bytes to the same name. Until
//!   then, loaders that follow the published entries do not see the entry at all.
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
//! [`ParquetSink::check_store`] probes the store at start: a store that does not honour
//! conditional puts (one that overwrites on `If-None-Match`) is refused, unless
//! `assume_single_writer` is set. Then commit entries are written check-then-put, which
//! is exact as long as one writer owns a partition at a time (the consumer group ensures
//! that except for a member that lost its session while still writing).

mod accept;
mod config;
mod decode;
mod encode;
mod error;
mod loader;
mod protocol;
mod store;
mod table;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use accept::Then;

use arrow_avro::reader::Decoder;
use bytes::Bytes;
use eventbus_runtime::{Ack, Acks, Record, Sink, SinkError, TopicPartition};
use eventbus_schemas::validate::BodyCheck;
use object_store::ObjectStore;
use object_store::path::Path;
use tokio::sync::Mutex;

pub use config::{DEFAULT_TABLE_ROOT, ParquetSinkConfig, PartitionEnds, S3Config, SchemaLookup};
pub use decode::{arrow_schema_of, wire_to_parquet};
use encode::RowMeta;
pub use encode::{COL_KAFKA_TS, COL_OFFSET, COL_PARTITION, COL_TOPIC};
pub use error::ParquetError;
pub use loader::{Cursor, PublishedFile, published_since};
pub use store::open_store;
use store::{ConditionalPuts, describe_store_error, probe_conditional_puts, store_error};
pub use table::{CommitEntry, CommitFile, Progress, SkippedRecord, Watermark};
use table::{Covered, Table};

const SINK: &str = "parquet";

/// One partition's buffered records.
struct PartBuf {
    tp: TopicPartition,
    table: Table,
    /// `None` until recovered; then the first offset not yet in the table, if known.
    next: Option<Option<i64>>,
    schema_id: Option<u32>,
    decoder: Option<Decoder>,
    /// Checks each body against `schema_id`'s schema before the decoder sees it.
    check: Option<Arc<BodyCheck>>,
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

    fn saw(&mut self, offset: i64) {
        self.seen = Some(self.seen.map_or(offset, |s| s.max(offset)));
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
    /// Whether commit entries are created conditionally: cleared by
    /// [`ParquetSink::check_store`] only on a store that cannot, with
    /// `assume_single_writer`.
    conditional: Arc<AtomicBool>,
    /// The topics' partitions, for the watermarks; without it, only partitions with
    /// progress count.
    partition_ends: OnceLock<PartitionEnds>,
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
        Self::with_store(config, store, root, lookup, initial)
    }

    /// A sink writing under `root` in `store`, which `config.table_root` only names (in
    /// messages): for stores [`open_store`] does not build, or wrappers around them.
    ///
    /// # Errors
    /// A schema in `initial` cannot be mapped.
    pub fn with_store(
        config: ParquetSinkConfig,
        store: Arc<dyn ObjectStore>,
        root: Path,
        lookup: SchemaLookup,
        initial: &[u32],
    ) -> Result<Self, SinkError> {
        let mut schemas = Vec::new();
        for id in initial {
            let json = lookup(*id)
                .map_err(|e| flush_error(format!("schema id {id}: {e}")))?
                .ok_or_else(|| flush_error(format!("schema id {id} is not registered")))?;
            arrow_schema_of(*id, &json)?;
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
                conditional: Arc::new(AtomicBool::new(true)),
                partition_ends: OnceLock::new(),
                writer,
                timer: OnceLock::new(),
                dirty: AtomicBool::new(false),
                buffered: AtomicUsize::new(0),
            }),
        })
    }

    /// Checks the table root before anything is consumed:
    /// - that it can be listed: a missing bucket, refused credentials or a root that is
    ///   not a folder stop the job at start, naming the root, instead of at its first
    ///   record;
    /// - that the store honours conditional puts, by creating one object twice and
    ///   expecting the second create to be refused. Exactly-once publication rests on
    ///   it: of two writers of one partition, only one may create a commit entry.
    ///
    /// # Errors
    /// The store refused the listing or the probe, after its own retries; or it does not
    /// honour conditional puts and `assume_single_writer` is not set.
    pub async fn check_store(&self) -> Result<(), SinkError> {
        let root = &self.inner.config.table_root;
        let failed = |e: object_store::Error| {
            flush_error(format!(
                "table root {root}: {}",
                describe_store_error(&store::error_chain(&e))
            ))
        };
        let store = self.inner.store.as_ref();
        store
            .list_with_delimiter(Some(&self.inner.root))
            .await
            .map_err(failed)?;
        let verdict = probe_conditional_puts(store, &self.inner.root, &self.inner.writer)
            .await
            .map_err(failed)?;
        let what = match verdict {
            ConditionalPuts::Honoured => return Ok(()),
            ConditionalPuts::Ignored => {
                "it does not honour conditional puts: a second create-only put (If-None-Match) of one object succeeded"
            }
            ConditionalPuts::Unsupported => "it cannot put conditionally (create only if absent)",
        };
        if !self.inner.config.assume_single_writer {
            return Err(flush_error(format!(
                "table root {root}: {what}. Without that, two writers of one partition (a \
                 consumer-group member that lost its session but still writes, and the \
                 partition's new owner) can both publish the same rows. Use a store that \
                 honours conditional puts (AWS S3, MinIO, the local filesystem), or, if only \
                 one writer can ever write each partition, set `[warehouse] \
                 assume_single_writer = true`"
            )));
        }
        tracing::warn!(
            table_root = %root,
            "{what}; with assume_single_writer, commit entries are written check-then-put, exact only while one writer at a time writes each partition"
        );
        self.inner.conditional.store(false, Ordering::Relaxed);
        Ok(())
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
                    self.inner.conditional.clone(),
                )
            })
            .clone()
    }

    /// The highest offset this sink has received for a partition, buffered or written.
    pub fn seen(&self, tp: &TopicPartition) -> Option<i64> {
        let part = lock(&self.inner.parts).get(tp).cloned()?;
        part.try_lock().ok().and_then(|p| p.seen)
    }

    /// Gives the sink the topics' partitions, so that each watermark counts every
    /// partition of its topic, including one that has nothing published yet. Set once;
    /// later calls are ignored.
    pub fn set_partition_ends(&self, ends: PartitionEnds) {
        let _ = self.inner.partition_ends.set(ends);
    }

    /// Recomputes each table's watermark file. A table whose topic's partitions cannot
    /// be read (when [`Self::set_partition_ends`] was given) keeps its watermark.
    ///
    /// # Errors
    /// The store could not be read or written.
    pub async fn write_watermarks(&self) -> Result<(), SinkError> {
        let tables: Vec<Table> = lock(&self.inner.tables).values().cloned().collect();
        for t in tables {
            let partitions = match self.inner.partition_ends.get().cloned() {
                None => None,
                Some(ends) => {
                    let topic = t.topic.clone();
                    match tokio::task::spawn_blocking(move || ends(&topic)).await {
                        Ok(Ok(p)) => Some(p),
                        Ok(Err(e)) => {
                            tracing::warn!(topic = %t.topic, error = %e, "cannot read the topic's partitions; its watermark stays");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(topic = %t.topic, error = %e, "cannot read the topic's partitions; its watermark stays");
                            continue;
                        }
                    }
                }
            };
            t.write_watermark(partitions.as_ref())
                .await
                .map_err(store_error)?;
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
            check: None,
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
}

impl Sink<Bytes> for ParquetSink {
    /// Each record needs its partition's buffer, found under a lock shared by every
    /// partition and then locked itself: once per run instead.
    const TAKES_RUNS: bool = true;
    const GIVES_BACK: bool = true;

    async fn send(&self, record: Record<Bytes>, ack: Ack) -> Result<(), SinkError> {
        self.send_batch(&mut vec![(record, ack)]).await
    }

    /// Finds and locks each partition's buffer once per run of its records.
    async fn send_batch(&self, batch: &mut Vec<(Record<Bytes>, Ack)>) -> Result<(), SinkError> {
        self.start_timer();
        let mut records = batch.drain(..).peekable();
        while let Some(first) = records.next() {
            let tp = TopicPartition::new(first.0.topic.clone(), first.0.partition);
            let part = self.part(&tp);
            let mut p = part.lock().await;
            let mut next = Some(first);
            while let Some((record, ack)) = next.take() {
                next = records.next_if(|(r, _)| r.partition == tp.partition && r.topic == tp.topic);
                if ack.is_abandoned() {
                    // Dropped, which settles it as failed, as the runtime would have.
                    continue;
                }
                // Futures only for what needs the store or the registry: a future per
                // record costs its copy.
                if Self::ready(&p, &record) {
                    let then = self.take_now(&mut p, record, ack);
                    if !matches!(then, Then::Nothing) {
                        Box::pin(self.then(&mut p, then)).await?;
                    }
                } else {
                    Box::pin(self.accept(&mut p, record, ack)).await?;
                }
            }
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
