//! The Parquet sink's errors outside the per-record path (where a record's reason goes
//! into its dead letter), each with a class.

use eventbus_runtime::{Classify, ErrorClass, SinkError};

/// An error of the Parquet sink's building blocks and tools.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParquetError {
    /// A writer schema is not valid Avro, or holds a construct that cannot map to Arrow.
    #[error("schema id {id}: {reason}")]
    Schema {
        /// The registry id.
        id: u32,
        /// Why.
        reason: String,
    },
    /// A record does not decode against its writer schema.
    #[error("record {index}: {reason}")]
    Record {
        /// Its position in the input.
        index: usize,
        /// Why.
        reason: String,
    },
    /// Arrow could not build a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet could not be written.
    #[error("writing Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The object store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// A loader's cursor is not one eventbus printed.
    #[error("{text:?} is not a cursor printed by eventbus: {reason}")]
    Cursor {
        /// The text given.
        text: String,
        /// Why.
        reason: String,
    },
}

impl Classify for ParquetError {
    fn class(&self) -> ErrorClass {
        match self {
            // A store that failed after its own retries may answer later.
            Self::Store(_) => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }
}

impl From<ParquetError> for SinkError {
    fn from(e: ParquetError) -> Self {
        super::flush_error(e.to_string())
    }
}
