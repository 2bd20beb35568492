//! Decoding: wire-format records straight into Arrow with arrow-avro, one decoder per
//! partition, rebuilt from the good records when a bad one arrives.

use std::sync::Arc;

use arrow::datatypes::Schema as ArrowSchema;
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use bytes::Bytes;
use eventbus_runtime::SinkError;
use eventbus_schemas::wire;

use super::encode::{self, FileFormat, RowMeta};
use super::{BodyCheck, ParquetError, ParquetSink, PartBuf, flush_error, lock};

/// The Arrow schema rows of `avro_schema_json` get, before the Kafka columns. Fails,
/// naming the schema, when a construct cannot be mapped.
///
/// # Errors
/// The schema is not valid Avro or holds a construct arrow-avro cannot map.
pub fn arrow_schema_of(id: u32, avro_schema_json: &str) -> Result<Arc<ArrowSchema>, ParquetError> {
    let decoder = build_decoder(&[(id, avro_schema_json.to_owned())], Some(id), 16)?;
    Ok(decoder.schema())
}

pub(super) fn build_decoder(
    schemas: &[(u32, String)],
    active: Option<u32>,
    batch_rows: usize,
) -> Result<Decoder, ParquetError> {
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    for (id, json) in schemas {
        store
            .set(Fingerprint::Id(*id), AvroSchema::new(json.clone()))
            .map_err(|e| ParquetError::Schema {
                id: *id,
                reason: e.to_string(),
            })?;
    }
    let mut b = ReaderBuilder::new()
        .with_writer_schema_store(store)
        .with_batch_size(batch_rows);
    if let Some(id) = active {
        b = b.with_active_fingerprint(Fingerprint::Id(id));
    }
    b.build_decoder().map_err(|e| ParquetError::Schema {
        id: active.unwrap_or_default(),
        reason: format!("cannot be mapped to Arrow: {e}"),
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
) -> Result<Vec<u8>, ParquetError> {
    let mut decoder = build_decoder(
        &[(id, avro_schema_json.to_owned())],
        Some(id),
        records.len() + 1,
    )?;
    let check =
        BodyCheck::new(avro_schema_json).map_err(|reason| ParquetError::Schema { id, reason })?;
    let mut meta = RowMeta::default();
    for (i, r) in records.iter().enumerate() {
        let bad = |reason: String| ParquetError::Record { index: i, reason };
        wire::split(r, None).map_err(|e| bad(e.to_string()))?;
        decode_one(&mut decoder, &check, id, r).map_err(|e| bad(e.into_reason()))?;
        meta.offsets.push(i as i64);
        meta.kafka_ts.push(None);
    }
    let batch = decoder.flush()?.ok_or(ParquetError::Record {
        index: 0,
        reason: "no records".into(),
    })?;
    let full = encode::with_kafka_columns(&batch, "bench", 0, &meta)?;
    encode::parquet_bytes(
        &full,
        FileFormat {
            row_group_rows: 128 * 1024,
            zstd_level,
        },
    )
}

/// Why [`decode_one`] did not take a record.
#[derive(Debug)]
pub(super) enum Fault {
    /// Refused before the decoder saw it.
    Refused(String),
    /// The decoder took part of it: rebuild it from the good records.
    Partial(String),
}

impl Fault {
    pub(super) fn into_reason(self) -> String {
        match self {
            Self::Refused(r) | Self::Partial(r) => r,
        }
    }
}

/// Feeds one framed record of writer schema `id` to `decoder`, once `check` has found its
/// body to be exactly one value of the schema, and makes sure the decoder took it as
/// exactly one row.
pub(super) fn decode_one(
    decoder: &mut Decoder,
    check: &BodyCheck,
    id: u32,
    bytes: &[u8],
) -> Result<(), Fault> {
    let body = bytes.get(wire::HEADER_LEN..).unwrap_or_default();
    check
        .check(body)
        .map_err(|e| Fault::Refused(format!("the body does not match schema id {id}: {e}")))?;
    let room = decoder.capacity();
    let outcome = decoder.decode(bytes);
    let rows = room - decoder.capacity();
    match outcome {
        Ok(n) if n == bytes.len() && rows == 1 => Ok(()),
        Ok(n) => Err(Fault::Partial(format!(
            "the body does not match schema id {id}: the decoder read {n} of its {} bytes as {rows} rows",
            bytes.len()
        ))),
        Err(e) => Err(Fault::Partial(format!(
            "the body does not match schema id {id}: {e}"
        ))),
    }
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
    /// [`Self::needs_decoder`].
    ///
    /// The body is checked against the schema first ([`BodyCheck`]): exactly one value,
    /// every enum index in range, strings UTF-8. arrow-avro checks some of that only when
    /// the file is built, and a record that failed there would fail its whole file, again
    /// after every restart. If the decoder still takes anything but exactly one row from
    /// the record, it is rebuilt from the good records, so the buffer stays consistent.
    pub(super) fn decode_into(
        &self,
        p: &mut PartBuf,
        id: u32,
        schemas: Option<Vec<(u32, String)>>,
        bytes: &[u8],
    ) -> Result<(), String> {
        if let Some(schemas) = schemas {
            let Some((_, json)) = schemas.iter().find(|(k, _)| *k == id) else {
                return Err(format!("schema id {id} is not found in the registry"));
            };
            let check = BodyCheck::new(json).map_err(|e| format!("schema id {id}: {e}"))?;
            p.decoder = Some(
                build_decoder(&schemas, Some(id), self.inner.config.roll_rows + 1)
                    .map_err(|e| e.to_string())?,
            );
            p.check = Some(Arc::new(check));
            p.schema_id = Some(id);
        }
        let (Some(decoder), Some(check)) = (p.decoder.as_mut(), p.check.as_ref()) else {
            return Err("no decoder".into());
        };
        match decode_one(decoder, check, id, bytes) {
            Ok(()) => Ok(()),
            Err(Fault::Refused(reason)) => Err(reason),
            Err(Fault::Partial(reason)) => {
                self.rebuild(p)
                    .map_err(|e| format!("{reason}; then: {e}"))?;
                Err(reason)
            }
        }
    }

    /// A fresh decoder holding the buffered records again.
    pub(super) fn rebuild(&self, p: &mut PartBuf) -> Result<(), ParquetError> {
        let Some(id) = p.schema_id else {
            return Ok(());
        };
        // The partition's schema was looked up when its decoder was first built.
        let schemas = lock(&self.inner.schemas).clone();
        let mut d = build_decoder(&schemas, Some(id), self.inner.config.roll_rows + 1)?;
        for raw in &p.raw {
            d.decode(raw)?;
        }
        p.decoder = Some(d);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use eventbus_schemas::fleet::FleetGenerator;
    use eventbus_schemas::{FileRegistry, bundled_dir};
    use proptest::prelude::*;

    use super::*;

    fn vehicle_states(n: usize) -> (u32, String, Vec<Vec<u8>>) {
        let registry = FileRegistry::open(&bundled_dir()).expect("registry");
        let (id, schema) = registry
            .latest_of("vehicle.state.v1-value")
            .expect("registered");
        let json = std::fs::read_to_string(bundled_dir().join("VehicleState.avsc"))
            .expect("the schema's text");
        let values = FleetGenerator::new(5, 1)
            .take(n)
            .map(|e| eventbus_schemas::encode(id, &schema, &e).expect("encode"))
            .collect();
        (id, json, values)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Records a producer in another language might send, good ones among them: what
        /// `decode_one` takes always builds into a batch, one row per record taken, and
        /// after a refusal a rebuilt decoder goes on. No input fails the batch at flush.
        #[test]
        fn what_decode_one_takes_always_flushes(
            edits in proptest::collection::vec(
                (any::<usize>(), any::<u8>(), 0u8..6, proptest::collection::vec(any::<u8>(), 0..12)),
                1..24,
            ),
        ) {
            let (id, json, goods) = vehicle_states(edits.len());
            let schemas = vec![(id, json.clone())];
            let check = BodyCheck::new(&json).expect("compiles");
            let mut decoder = build_decoder(&schemas, Some(id), 64).expect("decoder");
            let mut taken: Vec<Vec<u8>> = Vec::new();
            for ((at, byte, how, extra), good) in edits.into_iter().zip(goods) {
                let mut v = good.clone();
                let i = at % v.len();
                match how {
                    0 => {}
                    1 => v[i] = byte,
                    2 => v.truncate(i),
                    3 => v.extend_from_slice(&extra),
                    4 => v.extend_from_slice(&good),
                    _ => v = [&good[..5], extra.as_slice()].concat(),
                }
                match decode_one(&mut decoder, &check, id, &v) {
                    Ok(()) => taken.push(v.clone()),
                    Err(Fault::Refused(_)) => {}
                    Err(Fault::Partial(_)) => {
                        decoder = build_decoder(&schemas, Some(id), 64).expect("decoder");
                        for t in &taken {
                            decode_one(&mut decoder, &check, id, t).expect("taken before");
                        }
                    }
                }
                prop_assert!(how != 0 || taken.last() == Some(&v), "a good record is taken");
            }
            let rows = decoder.flush().expect("flushes").map_or(0, |b| b.num_rows());
            prop_assert_eq!(rows, taken.len());
        }
    }
}
