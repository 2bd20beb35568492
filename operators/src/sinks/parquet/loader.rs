//! What loaders read: `_eventbus/published/<partition>/<start offset>.json`, one per
//! commit entry, created only once every file the entry lists is in place under its final
//! name. The commit entry itself is the writers' decision and may exist before its files
//! do (after a crash between the commit and the copies, until the partition's next
//! writer rolls it forward); its published entry never does.
//!
//! An incremental loader keeps a [`Cursor`] (each table's partitions and the next offset
//! to take from each) and asks for what was published since: [`published_since`], or
//! `eventbus table files --after CURSOR` on the command line. A partition's published
//! entries form a chain (each starts at the previous one's end + 1), and a published entry
//! appears only after all those before it in its partition, so a cursor never skips one.

use std::collections::BTreeMap;

use base64::Engine;
use object_store::ObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::ParquetError;
use super::table::{CommitEntry, Table};

type StoreResult<T> = Result<T, object_store::Error>;

fn published_dir(partition: i32) -> String {
    format!("_eventbus/published/{partition:05}")
}

fn published_key(partition: i32, start: i64) -> String {
    format!("{}/{start:020}.json", published_dir(partition))
}

impl Table {
    /// Creates `entry`'s published entry. Call only once every file of the entry is in
    /// place. Writing it twice (a writer and the one that rolled its entry forward)
    /// writes the same entry.
    pub(crate) async fn mark_published(&self, entry: &CommitEntry) -> StoreResult<()> {
        let key = published_key(entry.partition, entry.start_offset);
        self.create(&key, serde_json::to_vec_pretty(entry).unwrap_or_default())
            .await
            .map(|_| ())
    }
}

/// Where an incremental loader is: per table (topic), per partition, the next offset to
/// take. Printed and parsed as an opaque text (`v1:` and URL-safe base64 of JSON), so
/// loaders store it as they got it. The empty cursor takes everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor(pub BTreeMap<String, BTreeMap<i32, i64>>);

impl Cursor {
    /// The cursor as text.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(&self.0).unwrap_or_default();
        format!(
            "v1:{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Parses a cursor printed by [`Self::encode`].
    ///
    /// # Errors
    /// The text is not such a cursor.
    pub fn decode(text: &str) -> Result<Self, ParquetError> {
        let bad = |reason: String| ParquetError::Cursor {
            text: text.to_owned(),
            reason,
        };
        let body = text
            .trim()
            .strip_prefix("v1:")
            .ok_or_else(|| bad("it does not start with v1:".into()))?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| bad(e.to_string()))?;
        serde_json::from_slice(&json)
            .map(Self)
            .map_err(|e| bad(e.to_string()))
    }
}

/// One file a loader can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishedFile {
    /// The table (source topic).
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// The commit entry's range: every offset in it is in the entry's files, except
    /// those it lists as skipped.
    pub start_offset: i64,
    /// Last offset of the range.
    pub end_offset: i64,
    /// Path relative to the table root: `<topic>/dt=.../hour=.../<name>.parquet`.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// The files published under `root` in `store` since `after`, in order per partition, and
/// the cursor that follows them. `topics` limits the tables; empty means every table
/// under the root.
///
/// # Errors
/// The store could not be listed or read, or a published entry is not valid.
pub async fn published_since(
    store: &dyn ObjectStore,
    root: &Path,
    topics: &[String],
    after: &Cursor,
) -> StoreResult<(Vec<PublishedFile>, Cursor)> {
    let topics = if topics.is_empty() {
        let listed = store.list_with_delimiter(Some(root)).await?;
        listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .filter(|name| !name.starts_with('_'))
            .collect()
    } else {
        topics.to_vec()
    };
    let mut files = Vec::new();
    let mut next = after.clone();
    for topic in topics {
        let table = root.child(topic.as_str());
        let dir = table.child("_eventbus").child("published");
        let partitions = store.list_with_delimiter(Some(&dir)).await?;
        for prefix in partitions.common_prefixes {
            let Some(partition) = prefix.filename().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let from = after
                .0
                .get(&topic)
                .and_then(|t| t.get(&partition))
                .copied()
                .unwrap_or(i64::MIN);
            // Names are zero-padded start offsets: list past the one just before `from`.
            let listed = if from > 0 {
                let offset = prefix.child(format!("{:020}.json", from - 1));
                futures::TryStreamExt::try_collect::<Vec<_>>(
                    store.list_with_offset(Some(&prefix), &offset),
                )
                .await?
            } else {
                futures::TryStreamExt::try_collect::<Vec<_>>(store.list(Some(&prefix))).await?
            };
            let mut entries: Vec<(i64, Path)> = listed
                .into_iter()
                .filter_map(|o| {
                    let start = o.location.filename()?.strip_suffix(".json")?.parse().ok()?;
                    (start >= from).then_some((start, o.location))
                })
                .collect();
            entries.sort_unstable_by_key(|(s, _)| *s);
            for (_, location) in entries {
                let bytes = store.get(&location).await?.bytes().await?;
                let entry: CommitEntry =
                    serde_json::from_slice(&bytes).map_err(|e| object_store::Error::Generic {
                        store: "eventbus",
                        source: format!("{location} is not valid: {e}").into(),
                    })?;
                for f in &entry.files {
                    files.push(PublishedFile {
                        topic: topic.clone(),
                        partition,
                        start_offset: entry.start_offset,
                        end_offset: entry.end_offset,
                        path: format!("{topic}/{}", f.path),
                        rows: f.rows,
                        bytes: f.bytes,
                    });
                }
                next.0
                    .entry(topic.clone())
                    .or_default()
                    .insert(partition, entry.end_offset + 1);
            }
        }
    }
    Ok((files, next))
}
