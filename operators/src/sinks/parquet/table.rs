//! One table in the object store and the protocol that keeps its files exactly once.
//! See the module docs of [`super`] for the protocol and its crash cases.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

/// One published file, as listed in a commit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitFile {
    /// Path relative to the table, e.g. `dt=2026-11-27/hour=09/00003-....parquet`.
    pub path: String,
    /// Where the file was staged before publication, relative to the table.
    pub staged: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// A record of an entry's offset range that is not in its files: the sink could not
/// decode it and sent it to the dead-letter queue instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRecord {
    /// Its offset.
    pub offset: i64,
    /// Why it is not in the table.
    pub reason: String,
}

/// A commit entry: `<table>/_eventbus/commits/<partition>/<start_offset>.json`. Its
/// existence is the decision that the offsets `start_offset..=end_offset` of the
/// partition are in the table, in exactly these files, except those listed in
/// `skipped` (dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitEntry {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// First offset covered: the previous entry's `end_offset + 1`, or the first record's
    /// offset for the partition's first entry.
    pub start_offset: i64,
    /// Last offset covered (the last record's offset).
    pub end_offset: i64,
    /// Rows in all files together.
    pub rows: u64,
    /// Writer schema id of every row.
    pub schema_id: u32,
    /// Largest event time in the files, ms since the epoch.
    pub max_event_time_ms: i64,
    /// The files.
    pub files: Vec<CommitFile>,
    /// When the entry was written, ms since the epoch.
    pub committed_at_ms: i64,
    /// Which writer made it (for diagnosis).
    pub writer: String,
    /// Offsets of the range that are not in the files because this entry's writer could
    /// not decode them and sent them to the dead-letter queue. Absent when there are
    /// none. A range may also hold offsets that are in neither: records an earlier
    /// writer dead-lettered (and committed) just before it stopped, transaction markers,
    /// compacted records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedRecord>,
}

/// What the commit chain says about an offset below the partition's `next`: the range
/// of offsets the same answer holds for, and the records of that range that are not in
/// the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Covered {
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) skipped: Vec<SkippedRecord>,
}

/// What a partition's progress record says:
/// `<table>/_eventbus/progress/<partition>/<next offset>.json`, the highest name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Source partition.
    pub partition: i32,
    /// Every offset below this is in the table.
    pub next_offset: i64,
    /// Largest event time published, ms since the epoch.
    pub max_event_time_ms: i64,
}

/// `<table>/_eventbus/watermark.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// Source topic.
    pub topic: String,
    /// Every hour strictly before this one (`YYYY-MM-DDTHH:00:00Z`) is complete in every
    /// partition of the topic: each partition listed has published that far, and the
    /// others are empty. (Without the topic's partitions, see
    /// [`super::ParquetSink::set_partition_ends`], only the partitions listed count.)
    pub complete_before: String,
    /// The same as ms since the epoch.
    pub complete_before_ms: i64,
    /// Per partition that has published anything, its progress.
    pub partitions: Vec<Progress>,
}

/// The outcome of writing a commit entry.
#[derive(Debug)]
pub(crate) enum Committed {
    /// Ours is the entry.
    Yes,
    /// Another writer committed this start offset first.
    Conflict,
}

pub(crate) type StoreResult<T> = Result<T, object_store::Error>;

/// A table: a prefix in an object store.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) root: Path,
    pub(crate) topic: String,
    /// Whether commit entries are created with a conditional put; false only on a store
    /// that cannot, run with `assume_single_writer`.
    conditional: Arc<AtomicBool>,
}

impl Table {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        root: Path,
        topic: &str,
        conditional: Arc<AtomicBool>,
    ) -> Self {
        Self {
            store,
            root,
            topic: topic.to_owned(),
            conditional,
        }
    }

    pub(crate) fn path(&self, relative: &str) -> Path {
        let mut p = self.root.clone();
        for part in relative.split('/').filter(|s| !s.is_empty()) {
            p = p.child(part);
        }
        p
    }

    fn commits_dir(partition: i32) -> String {
        format!("_eventbus/commits/{partition:05}")
    }

    pub(crate) fn commit_key(partition: i32, start: i64) -> String {
        format!("{}/{start:020}.json", Self::commits_dir(partition))
    }

    pub(crate) fn staged_key(partition: i32, start: i64, writer: &str, n: usize) -> String {
        format!("_eventbus/staging/{partition:05}/{start:020}-{writer}/{n:03}.parquet.staged")
    }

    pub(crate) fn final_key(dt: &str, hour: u32, partition: i32, start: i64, end: i64) -> String {
        format!("dt={dt}/hour={hour:02}/{partition:05}-{start:020}-{end:020}.parquet")
    }

    fn progress_dir(partition: i32) -> String {
        format!("_eventbus/progress/{partition:05}")
    }

    /// Progress records are created, never overwritten, one per published range and
    /// named by its next offset: the partition's progress is its highest name, so a
    /// record written late (by a writer that lost the partition) never moves it back.
    fn progress_key(partition: i32, next_offset: i64) -> String {
        format!("{}/{next_offset:020}.json", Self::progress_dir(partition))
    }

    pub(crate) async fn put(&self, relative: &str, bytes: Vec<u8>) -> StoreResult<()> {
        self.store
            .put(&self.path(relative), PutPayload::from(bytes))
            .await
            .map(|_| ())
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, relative: &str) -> StoreResult<T> {
        let path = self.path(relative);
        let bytes = self.store.get(&path).await?.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| object_store::Error::Generic {
            store: "eventbus",
            source: format!("{path} is not valid: {e}").into(),
        })
    }

    /// The start offsets of a partition's commit entries, in order.
    async fn commit_starts(&self, partition: i32) -> StoreResult<Vec<i64>> {
        let dir = self.path(&Self::commits_dir(partition));
        let listed = self.store.list_with_delimiter(Some(&dir)).await?;
        let mut starts: Vec<i64> = listed
            .objects
            .iter()
            .filter_map(|o| o.location.filename()?.strip_suffix(".json")?.parse().ok())
            .collect();
        starts.sort_unstable();
        Ok(starts)
    }

    /// The newest commit entry of a partition, if any.
    pub(crate) async fn last_commit(&self, partition: i32) -> StoreResult<Option<CommitEntry>> {
        match self.commit_starts(partition).await?.last() {
            Some(&start) => self
                .get_json(&Self::commit_key(partition, start))
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// The commit entry whose range holds `offset` (for a record read again below the
    /// partition's `next`), or, when none does, the gap up to the next entry.
    pub(crate) async fn covering(&self, partition: i32, offset: i64) -> StoreResult<Covered> {
        let starts = self.commit_starts(partition).await?;
        let after = starts.partition_point(|s| *s <= offset);
        let gap = Covered {
            start: offset,
            end: starts.get(after).map_or(i64::MAX, |s| s - 1),
            skipped: Vec::new(),
        };
        let Some(&start) = after.checked_sub(1).and_then(|i| starts.get(i)) else {
            return Ok(gap);
        };
        let entry: CommitEntry = self.get_json(&Self::commit_key(partition, start)).await?;
        if entry.end_offset < offset {
            return Ok(gap);
        }
        Ok(Covered {
            start: entry.start_offset,
            end: entry.end_offset,
            skipped: entry.skipped,
        })
    }

    /// Makes sure every file of `entry` is published: a file missing under its final name
    /// is copied from its staged copy (the roll-forward after a crash between the commit
    /// entry and publication).
    pub(crate) async fn roll_forward(&self, entry: &CommitEntry) -> StoreResult<usize> {
        let mut copied = 0;
        for f in &entry.files {
            let target = self.path(&f.path);
            match self.store.head(&target).await {
                Ok(_) => continue,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            self.store.copy(&self.path(&f.staged), &target).await?;
            copied += 1;
        }
        Ok(copied)
    }

    /// Copies every staged file of a just-committed entry to its final name. No check
    /// first: the names are ours, and a copy made twice writes the same bytes.
    pub(crate) async fn publish(&self, entry: &CommitEntry) -> StoreResult<()> {
        for f in &entry.files {
            self.store
                .copy(&self.path(&f.staged), &self.path(&f.path))
                .await?;
        }
        Ok(())
    }

    /// Deletes staged files of a partition whose start offset is below `next`: they were
    /// published (copied) or abandoned. Staged files at or above `next` may belong to a
    /// writer still running elsewhere and are left alone.
    pub(crate) async fn clean_staging(&self, partition: i32, next: i64) -> StoreResult<()> {
        let dir = self.path(&format!("_eventbus/staging/{partition:05}"));
        let listed = self.store.list_with_delimiter(Some(&dir)).await?;
        for prefix in listed.common_prefixes {
            let name = prefix.filename().unwrap_or_default();
            let start = name
                .split('-')
                .next()
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(i64::MAX);
            if start >= next {
                continue;
            }
            let inner = self.store.list_with_delimiter(Some(&prefix)).await?;
            for o in inner.objects {
                match self.store.delete(&o.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Creates `relative` unless it exists: with a conditional put, or, on a store that
    /// cannot put conditionally (run with `assume_single_writer`), check-then-put.
    pub(crate) async fn create(&self, relative: &str, body: Vec<u8>) -> StoreResult<Committed> {
        let path = self.path(relative);
        if self.conditional.load(Ordering::Relaxed) {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            return match self
                .store
                .put_opts(&path, PutPayload::from(body), opts)
                .await
            {
                Ok(_) => Ok(Committed::Yes),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(Committed::Conflict),
                Err(e) => Err(e),
            };
        }
        match self.store.head(&path).await {
            Ok(_) => return Ok(Committed::Conflict),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        self.store.put(&path, PutPayload::from(body)).await?;
        Ok(Committed::Yes)
    }

    /// Writes the commit entry unless one exists for the same start offset.
    pub(crate) async fn commit(&self, entry: &CommitEntry) -> StoreResult<Committed> {
        let key = Self::commit_key(entry.partition, entry.start_offset);
        self.create(&key, serde_json::to_vec_pretty(entry).unwrap_or_default())
            .await
    }

    pub(crate) async fn write_progress(&self, progress: &Progress) -> StoreResult<()> {
        let key = Self::progress_key(progress.partition, progress.next_offset);
        // Already there: the same range's record, written by its other writer, with the
        // same content.
        self.create(&key, serde_json::to_vec(progress).unwrap_or_default())
            .await?;
        // Older records are superseded. Only names below ours go, so the newest record
        // always stays, whoever prunes.
        let dir = self.path(&Self::progress_dir(progress.partition));
        let listed = self.store.list_with_delimiter(Some(&dir)).await?;
        for o in listed.objects {
            if Self::progress_offset(&o.location).is_some_and(|n| n < progress.next_offset) {
                match self.store.delete(&o.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => tracing::debug!(error = %e, "pruning a progress record"),
                }
            }
        }
        Ok(())
    }

    /// The next offset a progress record's name says.
    fn progress_offset(location: &Path) -> Option<i64> {
        location.filename()?.strip_suffix(".json")?.parse().ok()
    }

    /// Every partition's progress: its newest record.
    pub(crate) async fn progress(&self) -> StoreResult<Vec<Progress>> {
        let dir = self.path("_eventbus/progress");
        let listed: Vec<object_store::ObjectMeta> =
            self.store.list(Some(&dir)).try_collect().await?;
        let mut newest: BTreeMap<i32, (i64, Path)> = BTreeMap::new();
        for o in listed {
            let parts: Vec<_> = o.location.parts().collect();
            let (Some(n), Some(part)) = (
                Self::progress_offset(&o.location),
                // The partition's folder; files of other layouts are not progress.
                parts
                    .len()
                    .checked_sub(2)
                    .and_then(|i| parts[i].as_ref().parse::<i32>().ok()),
            ) else {
                continue;
            };
            if newest.get(&part).is_none_or(|(m, _)| n > *m) {
                newest.insert(part, (n, o.location));
            }
        }
        let mut out = Vec::with_capacity(newest.len());
        for (_, location) in newest.values() {
            let bytes = self.store.get(location).await?.bytes().await?;
            out.push(
                serde_json::from_slice(&bytes).map_err(|e| object_store::Error::Generic {
                    store: "eventbus",
                    source: format!("{location} is not valid: {e}").into(),
                })?,
            );
        }
        out.sort_by_key(|p: &Progress| p.partition);
        Ok(out)
    }

    /// Recomputes `_eventbus/watermark.json` from the progress records and, when known,
    /// the topic's partitions with their (low, high) offsets from its metadata. Every
    /// partition counts: one with records and no progress yet holds the watermark back
    /// entirely (nothing is written); an empty one (low = high) holds nothing back.
    /// Without `partitions`, only those with progress count.
    pub(crate) async fn write_watermark(
        &self,
        partitions: Option<&BTreeMap<i32, (i64, i64)>>,
    ) -> StoreResult<Option<Watermark>> {
        let progress = self.progress().await?;
        if let Some(all) = partitions {
            let waiting: Vec<i32> = all
                .iter()
                .filter(|(p, (low, high))| {
                    high > low && !progress.iter().any(|x| x.partition == **p)
                })
                .map(|(p, _)| *p)
                .collect();
            if !waiting.is_empty() {
                tracing::debug!(
                    topic = %self.topic, partitions = ?waiting,
                    "no watermark yet: these partitions have records and nothing published"
                );
                return Ok(None);
            }
        }
        let partitions = progress;
        let Some(min) = partitions.iter().map(|p| p.max_event_time_ms).min() else {
            return Ok(None);
        };
        let hour = min.div_euclid(3_600_000);
        let (dt, h) = super::encode::hour_path(hour);
        let mark = Watermark {
            topic: self.topic.clone(),
            complete_before: format!("{dt}T{h:02}:00:00Z"),
            complete_before_ms: hour * 3_600_000,
            partitions,
        };
        self.put(
            "_eventbus/watermark.json",
            serde_json::to_vec_pretty(&mark).unwrap_or_default(),
        )
        .await?;
        Ok(Some(mark))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_progress_record_written_late_never_moves_progress_back() {
        for conditional in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("store"),
            );
            let t = Table::new(
                store,
                Path::from("t.v1"),
                "t.v1",
                Arc::new(AtomicBool::new(conditional)),
            );
            let at = |next_offset, max_event_time_ms| Progress {
                partition: 3,
                next_offset,
                max_event_time_ms,
            };
            t.write_progress(&at(10, 1_000)).await.expect("write");
            t.write_progress(&at(15, 2_000)).await.expect("write");
            // A writer that lost the partition publishes its progress late.
            t.write_progress(&at(10, 1_000)).await.expect("write");
            assert_eq!(t.progress().await.expect("read"), vec![at(15, 2_000)]);
            // And the newest one prunes what it supersedes.
            t.write_progress(&at(20, 3_000)).await.expect("write");
            let left = std::fs::read_dir(dir.path().join("t.v1/_eventbus/progress/00003"))
                .expect("dir")
                .count();
            assert_eq!(left, 1);
            assert_eq!(t.progress().await.expect("read"), vec![at(20, 3_000)]);
        }
    }
}
