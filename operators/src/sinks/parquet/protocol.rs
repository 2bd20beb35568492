//! The exactly-once commit protocol: recovering a partition's position from the table,
//! staging files, committing an entry conditionally, publishing, and acknowledging. Its
//! crash cases are listed in the module docs of the sink (`super`).

use std::sync::atomic::Ordering;

use arrow::array::RecordBatch;
use arrow_avro::reader::Decoder;
use eventbus_runtime::{SinkError, TopicPartition};

use super::encode::{self, FileFormat};
use super::store::store_error;
use super::table::{CommitEntry, CommitFile, Committed, Progress, Table};
use super::{ParquetSink, PartBuf, flush_error, lock};

impl ParquetSink {
    /// Recovers the partition's position from the table if not done since assignment.
    pub(super) async fn recover(&self, p: &mut PartBuf) -> Result<Option<i64>, SinkError> {
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
                // Every file is in place now: loaders may see the entry.
                p.table.mark_published(&entry).await.map_err(store_error)?;
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
    pub(super) async fn skipped_reason(
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

    /// Stages, commits and publishes what a partition holds, then acknowledges it.
    pub(super) async fn publish(&self, p: &mut PartBuf) -> Result<(), SinkError> {
        let started = std::time::Instant::now();
        let result = self.try_publish(p).await;
        metrics::histogram!("eventbus_warehouse_publish_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.take_rows(p, usize::MAX)
                .fail(|| flush_error(e.to_string()));
            p.decoder = None;
            // Whatever happened, the table is the truth: read it again before writing.
            p.next = None;
        }
        result
    }

    pub(super) async fn try_publish(&self, p: &mut PartBuf) -> Result<(), SinkError> {
        for _attempt in 0..8 {
            if p.rows() == 0 {
                return Ok(());
            }
            // A publish cancelled after the decoder gave its rows up (a partition task
            // aborted at a revoke's deadline) leaves the rows buffered and the decoder
            // empty: decode them again.
            if p.decoder.as_ref().is_none_or(Decoder::batch_is_empty) {
                self.rebuild(p)?;
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
                    self.rebuild(p)?;
                }
            }
        }
        Err(flush_error("gave up after repeated commit conflicts"))
    }

    /// Steps 3–5 of the protocol for one decoded batch.
    pub(super) async fn write_files(
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
        .map_err(|e| flush_error(format!("the encoding task ended: {e}")))??;
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
        p.table.mark_published(&entry).await.map_err(store_error)?;
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
        let topic = tp.topic.to_string();
        metrics::counter!("eventbus_warehouse_files_published_total", "topic" => topic.clone())
            .increment(entry.files.len() as u64);
        metrics::counter!("eventbus_warehouse_rows_published_total", "topic" => topic.clone())
            .increment(entry.rows);
        metrics::counter!("eventbus_warehouse_bytes_published_total", "topic" => topic)
            .increment(entry.files.iter().map(|f| f.bytes).sum());
        Ok(Committed::Yes)
    }

    pub(super) async fn publish_all(
        &self,
        which: Option<&[TopicPartition]>,
    ) -> Result<(), SinkError> {
        // Revoked partitions leave the map first: if the revoke's deadline passes while
        // they publish, the next assignment starts from a fresh buffer that recovers
        // from the table, while the old one finishes (or not) on its own.
        let parts: Vec<_> = {
            let mut map = lock(&self.inner.parts);
            match which {
                Some(which) => which.iter().filter_map(|tp| map.remove(tp)).collect(),
                None => map.values().cloned().collect(),
            }
        };
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
        if self.inner.dirty.swap(false, Ordering::Relaxed)
            && let Err(e) = self.write_watermarks().await
        {
            tracing::warn!(error = %e, "could not write the table watermarks");
        }
        first_error.map_or(Ok(()), Err)
    }
}
