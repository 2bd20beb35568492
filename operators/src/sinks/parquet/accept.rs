//! Taking one record into its partition's buffer: the sink's per-record path.
//!
//! Most records need nothing but their partition's decoder, and are taken without a
//! future ([`ParquetSink::take_now`]); the others (the first after an assignment, one the
//! table has already, one with a new writer schema) go through [`ParquetSink::accept`],
//! which reads the store or the registry first.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use eventbus_runtime::{Ack, ErrorClass, Record, SinkError};
use eventbus_schemas::wire;

use super::{ParquetSink, PartBuf, SINK, SkippedRecord};

/// What the caller owes a partition after taking a record.
pub(super) enum Then {
    Nothing,
    /// Its file is full: publish it.
    Publish,
    /// The job holds as many rows as it may: publish it and every partition with rows.
    PublishAll,
}

impl ParquetSink {
    /// Whether [`Self::take_now`] can take `record`: its partition is recovered, the
    /// record is not in the table yet, and the partition's decoder fits it (or it is not
    /// in the wire format at all). Else it needs [`Self::accept`].
    pub(super) fn ready(p: &PartBuf, record: &Record<Bytes>) -> bool {
        let Some(next) = p.next else {
            return false;
        };
        if next.is_some_and(|next| record.offset < next) {
            return false;
        }
        wire::split(&record.value, None).map_or(true, |(id, _)| !Self::needs_decoder(p, id))
    }

    /// Takes a record [`Self::ready`] said yes to, without awaiting: buffered, or
    /// dead-lettered when it cannot be decoded.
    pub(super) fn take_now(&self, p: &mut PartBuf, record: Record<Bytes>, ack: Ack) -> Then {
        p.saw(record.offset);
        match wire::split(&record.value, None) {
            Ok((id, _)) => self.buffer(p, record, ack, id, None),
            Err(e) => {
                self.skip(p, record, ack, format!("not in the wire format: {e}"));
                Then::Nothing
            }
        }
    }

    /// Takes one record of `p`'s partition, reading the store or the registry when it
    /// must: acknowledged at once when the table has it already, dead-lettered when it
    /// cannot be decoded, else buffered (and published when its file is full).
    pub(super) async fn accept(
        &self,
        p: &mut PartBuf,
        record: Record<Bytes>,
        ack: Ack,
    ) -> Result<(), SinkError> {
        p.saw(record.offset);
        // The rare paths (recovery, reading the commit chain, publishing) are boxed: their
        // futures hold the store's, and inline they made this future kilobytes large.
        let next = match p.next {
            Some(next) => next,
            None => Box::pin(self.recover(p)).await?,
        };
        if let Some(next) = next
            && record.offset < next
        {
            // In the table, or dead-lettered by the writer of the entry that covers it
            // (whose letter may have been lost with that writer): dead-letter it again.
            match Box::pin(self.skipped_reason(p, record.offset)).await? {
                Some(reason) => self.bad(record, ack, reason),
                None => ack.done(),
            }
            return Ok(());
        }
        let id = match wire::split(&record.value, None) {
            Ok((id, _)) => id,
            Err(e) => {
                self.skip(p, record, ack, format!("not in the wire format: {e}"));
                return Ok(());
            }
        };
        if p.rows() > 0 && p.schema_id != Some(id) {
            // A new writer schema rolls the file: one schema per file.
            Box::pin(self.publish(p)).await?;
        }
        let schemas = if Self::needs_decoder(p, id) {
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
        let then = self.buffer(p, record, ack, id, schemas);
        self.then(p, then).await
    }

    /// Decodes a record of writer schema `id` into the partition's buffer (its decoder
    /// built from `schemas` first when given), or dead-letters it when it cannot be.
    fn buffer(
        &self,
        p: &mut PartBuf,
        record: Record<Bytes>,
        ack: Ack,
        id: u32,
        schemas: Option<Vec<(u32, String)>>,
    ) -> Then {
        if let Err(reason) = self.decode_into(p, id, schemas, &record.value) {
            self.skip(p, record, ack, reason);
            return Then::Nothing;
        }
        p.bytes += record.value.len();
        p.meta.offsets.push(record.offset);
        p.meta.kafka_ts.push(record.timestamp);
        p.raw.push(record.value);
        p.acks.push(ack);
        let buffered = self.inner.buffered.fetch_add(1, Ordering::Relaxed) + 1;
        if p.oldest.is_none() {
            p.oldest = Some(Instant::now());
        }
        if p.rows() >= self.inner.config.roll_rows || p.bytes >= self.inner.config.roll_bytes {
            Then::Publish
        } else if buffered >= self.inner.config.max_buffered_rows {
            Then::PublishAll
        } else {
            Then::Nothing
        }
    }

    /// Does what [`Self::buffer`] asked for.
    pub(super) async fn then(&self, p: &mut PartBuf, then: Then) -> Result<(), SinkError> {
        match then {
            Then::Nothing => {}
            Then::Publish => Box::pin(self.publish(p)).await?,
            Then::PublishAll => {
                // The job's memory bound: publish this partition and every idle one, so
                // the runtime never pauses everything while rows wait for the maximum
                // age. This partition stays locked by the caller, with nothing left.
                Box::pin(self.publish(p)).await?;
                Box::pin(self.publish_where(|p| p.rows() > 0)).await;
            }
        }
        Ok(())
    }

    /// Dead-letters a record that cannot be decoded, and lists it as skipped in the next
    /// commit entry.
    fn skip(&self, p: &mut PartBuf, record: Record<Bytes>, ack: Ack, reason: String) {
        // Written to the commit entry, which loaders read: never with personal data.
        let reason = eventbus_runtime::redact::redact(&ack.origin(), Some(&record.value), &reason);
        p.failed.push(SkippedRecord {
            offset: record.offset,
            reason: reason.clone(),
        });
        self.bad(record, ack, reason);
    }

    /// Fails a record to the dead-letter queue, or, without dead letters, stops the job
    /// on it. Its origin is built only then, not for every record. The record goes back
    /// with the ack: the job keeps no copy of it ([`ParquetSink`] `GIVES_BACK`).
    fn bad(&self, record: Record<Bytes>, ack: Ack, reason: String) {
        let class = if self.inner.config.dead_letters {
            ErrorClass::Permanent
        } else {
            ErrorClass::Fatal
        };
        let origin = ack.origin();
        ack.fail_with(
            record,
            SinkError::Delivery {
                sink: SINK,
                origin,
                reason,
                class,
            },
        );
    }
}
