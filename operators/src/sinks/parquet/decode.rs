//! Decoding: wire-format records straight into Arrow with arrow-avro, one decoder per
//! partition, rebuilt from the good records when a bad one arrives.

use std::sync::Arc;

use arrow::datatypes::Schema as ArrowSchema;
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use bytes::Bytes;
use eventbus_runtime::SinkError;

use super::encode::{self, FileFormat, RowMeta};
use super::{ParquetSink, PartBuf, flush_error, lock};

/// The Arrow schema rows of `avro_schema_json` get, before the Kafka columns. Fails,
/// naming the schema, when a construct cannot be mapped.
///
/// # Errors
/// The schema is not valid Avro or holds a construct arrow-avro cannot map.
pub fn arrow_schema_of(id: u32, avro_schema_json: &str) -> Result<Arc<ArrowSchema>, String> {
    let decoder = build_decoder(&[(id, avro_schema_json.to_owned())], Some(id), 16)?;
    Ok(decoder.schema())
}

pub(super) fn build_decoder(
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

impl ParquetSink {
    /// The known schemas, `id`'s included when the registry has it.
    pub(super) async fn known_schemas(&self, id: u32) -> Result<Vec<(u32, String)>, SinkError> {
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
    pub(super) fn needs_decoder(p: &PartBuf, id: u32) -> bool {
        p.decoder.is_none() || p.schema_id != Some(id)
    }

    /// Feeds one record's bytes to the partition's decoder, built from `schemas` (the
    /// known schemas, `id`'s included when the registry has it) when
    /// [`Self::needs_decoder`]. On a bad record the decoder is rebuilt from the good
    /// records, so the buffer stays consistent.
    pub(super) fn decode_into(
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
    pub(super) fn rebuild(&self, p: &mut PartBuf) -> Result<(), String> {
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
}
