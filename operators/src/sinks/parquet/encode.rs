//! Arrow batches into Parquet bytes: the Kafka columns, the split by hour, the writer.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, UInt32Array,
};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::error::ArrowError;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

/// Column holding the source topic.
pub const COL_TOPIC: &str = "_topic";
/// Column holding the source partition.
pub const COL_PARTITION: &str = "_partition";
/// Column holding the source offset.
pub const COL_OFFSET: &str = "_offset";
/// Column holding the Kafka timestamp (UTC).
pub const COL_KAFKA_TS: &str = "_kafka_ts";

const HOUR_MS: i64 = 3_600_000;

/// Where each decoded row came from, in row order.
#[derive(Debug, Default)]
pub(crate) struct RowMeta {
    pub(crate) offsets: Vec<i64>,
    pub(crate) kafka_ts: Vec<Option<i64>>,
}

/// Appends `_topic`, `_partition`, `_offset` and `_kafka_ts` to a decoded batch.
pub(crate) fn with_kafka_columns(
    batch: &RecordBatch,
    topic: &str,
    partition: i32,
    meta: &RowMeta,
) -> Result<RecordBatch, ArrowError> {
    let n = batch.num_rows();
    if meta.offsets.len() != n {
        return Err(ArrowError::InvalidArgumentError(format!(
            "{n} decoded rows but {} records",
            meta.offsets.len()
        )));
    }
    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    fields.push(Arc::new(Field::new(COL_TOPIC, DataType::Utf8, false)));
    columns.push(Arc::new(StringArray::from(vec![topic; n])));
    fields.push(Arc::new(Field::new(COL_PARTITION, DataType::Int32, false)));
    columns.push(Arc::new(Int32Array::from(vec![partition; n])));
    fields.push(Arc::new(Field::new(COL_OFFSET, DataType::Int64, false)));
    columns.push(Arc::new(Int64Array::from(meta.offsets.clone())));
    fields.push(Arc::new(Field::new(
        COL_KAFKA_TS,
        DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
        true,
    )));
    columns.push(Arc::new(
        TimestampMillisecondArray::from(meta.kafka_ts.clone()).with_timezone("+00:00"),
    ));
    let schema = Schema::new_with_metadata(fields, batch.schema().metadata().clone());
    RecordBatch::try_new(Arc::new(schema), columns)
}

/// The event time of each row in ms: from `field` when set (a timestamp or a long of
/// milliseconds), else the Kafka timestamp, else the epoch.
fn event_times(batch: &RecordBatch, field: Option<&str>) -> Result<Vec<i64>, ArrowError> {
    let kafka = batch
        .column_by_name(COL_KAFKA_TS)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
        .ok_or_else(|| ArrowError::SchemaError("the _kafka_ts column is missing".into()))?;
    let fallback = |i: usize| {
        if kafka.is_null(i) { 0 } else { kafka.value(i) }
    };
    let Some(name) = field else {
        return Ok((0..batch.num_rows()).map(fallback).collect());
    };
    let column = batch.column_by_name(name).ok_or_else(|| {
        ArrowError::SchemaError(format!("the event-time field {name:?} is not a column"))
    })?;
    let any = column.as_any();
    let pick = |nulls: &dyn Array, value: &dyn Fn(usize) -> i64| -> Vec<i64> {
        (0..batch.num_rows())
            .map(|i| {
                if nulls.is_null(i) {
                    fallback(i)
                } else {
                    value(i)
                }
            })
            .collect()
    };
    if let Some(a) = any.downcast_ref::<TimestampMillisecondArray>() {
        Ok(pick(a, &|i| a.value(i)))
    } else if let Some(a) = any.downcast_ref::<TimestampMicrosecondArray>() {
        Ok(pick(a, &|i| a.value(i).div_euclid(1000)))
    } else if let Some(a) = any.downcast_ref::<Int64Array>() {
        Ok(pick(a, &|i| a.value(i)))
    } else {
        Err(ArrowError::SchemaError(format!(
            "the event-time field {name:?} is {}, not a timestamp or a long of milliseconds",
            column.data_type()
        )))
    }
}

/// One hour's rows of a batch.
#[derive(Debug)]
pub(crate) struct HourSlice {
    /// `YYYY-MM-DD`.
    pub(crate) dt: String,
    /// 0..=23.
    pub(crate) hour: u32,
    pub(crate) batch: RecordBatch,
    /// Largest event time in the slice.
    pub(crate) max_event_ms: i64,
}

/// Splits a batch by the UTC hour of each row's event time, in hour order; rows keep
/// their order within an hour.
pub(crate) fn split_by_hour(
    batch: &RecordBatch,
    field: Option<&str>,
) -> Result<Vec<HourSlice>, ArrowError> {
    let times = event_times(batch, field)?;
    let mut hours: BTreeMap<i64, (Vec<u32>, i64)> = BTreeMap::new();
    for (i, t) in times.iter().enumerate() {
        let e = hours
            .entry(t.div_euclid(HOUR_MS))
            .or_insert((Vec::new(), *t));
        e.0.push(u32::try_from(i).unwrap_or(u32::MAX));
        e.1 = e.1.max(*t);
    }
    let single = hours.len() == 1;
    hours
        .into_iter()
        .map(|(h, (rows, max_event_ms))| {
            let batch = if single {
                batch.clone()
            } else {
                take_record_batch(batch, &UInt32Array::from(rows))?
            };
            let (dt, hour) = hour_path(h);
            Ok(HourSlice {
                dt,
                hour,
                batch,
                max_event_ms,
            })
        })
        .collect()
}

/// The `dt` and `hour` of an hour number since the epoch (UTC).
pub(crate) fn hour_path(hours_since_epoch: i64) -> (String, u32) {
    use chrono::Timelike;
    let t = chrono::DateTime::from_timestamp(hours_since_epoch.saturating_mul(3600), 0)
        .unwrap_or_default();
    (t.format("%Y-%m-%d").to_string(), t.hour())
}

/// Calls `f` with the path and type of every leaf column under `field` (struct fields
/// are walked; lists and maps are leaves here and keep the writer's defaults).
fn for_each_leaf(field: &Field, path: &mut Vec<String>, f: &mut dyn FnMut(&[String], &DataType)) {
    path.push(field.name().clone());
    match field.data_type() {
        DataType::Struct(children) => {
            for child in children {
                for_each_leaf(child, path, f);
            }
        }
        data_type => f(path, data_type),
    }
    path.pop();
}

/// The encoding for a column whose values are almost all distinct (offsets, instants,
/// ids, measurements), or `None` to keep the dictionary. A dictionary over such a column
/// hashes every value only to be abandoned when the dictionary page fills; that was a
/// large share of the writer's time. Only encodings every Parquet reader knows are used.
fn high_cardinality_encoding(path: &[String], data_type: &DataType) -> Option<Encoding> {
    match data_type {
        DataType::Timestamp(..) => Some(Encoding::DELTA_BINARY_PACKED),
        DataType::Int64 if path == [COL_OFFSET] => Some(Encoding::DELTA_BINARY_PACKED),
        DataType::Float32 | DataType::Float64 | DataType::FixedSizeBinary(_) => {
            Some(Encoding::PLAIN)
        }
        _ => None,
    }
}

/// Parquet writer settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileFormat {
    pub(crate) row_group_rows: usize,
    pub(crate) zstd_level: i32,
}

/// One Parquet file holding `batch`, in memory.
pub(crate) fn parquet_bytes(
    batch: &RecordBatch,
    format: FileFormat,
) -> Result<Vec<u8>, super::ParquetError> {
    let level = ZstdLevel::try_new(format.zstd_level)?;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_size(format.row_group_rows.max(1))
        // Readers prune by row group; page-level statistics cost a comparison per value.
        .set_statistics_enabled(EnabledStatistics::Chunk);
    for field in batch.schema().fields() {
        for_each_leaf(field, &mut Vec::new(), &mut |path, data_type| {
            if let Some(encoding) = high_cardinality_encoding(path, data_type) {
                let column = ColumnPath::new(path.to_vec());
                builder = std::mem::take(&mut builder)
                    .set_column_dictionary_enabled(column.clone(), false)
                    .set_column_encoding(column, encoding);
            }
        });
    }
    let props = builder.build();
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 4);
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_paths_follow_the_calendar() {
        assert_eq!(hour_path(0), ("1970-01-01".into(), 0));
        assert_eq!(hour_path(23), ("1970-01-01".into(), 23));
        assert_eq!(hour_path(24), ("1970-01-02".into(), 0));
        // 2024-02-29 13:00 UTC = 1_709_211_600 s.
        assert_eq!(hour_path(1_709_211_600 / 3600), ("2024-02-29".into(), 13));
        assert_eq!(hour_path(-1), ("1969-12-31".into(), 23));
    }
}
