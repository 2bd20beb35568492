//! Errors of the schemas crate. Decode errors are Permanent: the bytes will not get
//! better by retrying, so the record belongs in the dead-letter queue. The one exception
//! is a registry that cannot answer: that says nothing about the bytes, and is classified
//! by the registry's own error.

use std::path::PathBuf;

use eventbus_runtime::{Classify, ErrorClass, Origin};

/// Why a record's bytes could not be decoded. Each variant names the record when the
/// caller gave its coordinates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer than the 5 header bytes of the wire format.
    #[error("{} is {len} bytes, shorter than the 5-byte wire-format header", at(.origin))]
    Truncated {
        /// The record, where known.
        origin: Option<Origin>,
        /// Bytes present.
        len: usize,
    },
    /// The first byte is not the wire format's magic byte 0.
    #[error("{} starts with byte {found:#04x}, not the wire-format magic byte 0x00", at(.origin))]
    WrongMagic {
        /// The record, where known.
        origin: Option<Origin>,
        /// The byte found.
        found: u8,
    },
    /// The schema id is not in the registry.
    #[error("{} names schema id {id}, which the registry does not know", at(.origin))]
    UnknownSchema {
        /// The record, where known.
        origin: Option<Origin>,
        /// The id.
        id: u32,
    },
    /// The registry could not say which schema `id` is (unreachable, or refusing us).
    /// Classified by the registry's error: usually Transient, so the record is retried
    /// rather than dead-lettered as if its bytes were bad.
    #[error("{}: cannot look up schema id {id}: {source}", at(.origin))]
    Registry {
        /// The record, where known.
        origin: Option<Origin>,
        /// The id.
        id: u32,
        /// The registry's error.
        #[source]
        source: RegistryError,
    },
    /// The body does not decode with its writer schema.
    #[error("{}: body does not match schema id {id}: {reason}", at(.origin))]
    BadBody {
        /// The record, where known.
        origin: Option<Origin>,
        /// The writer schema id.
        id: u32,
        /// The Avro library's words.
        reason: String,
    },
    /// The body decoded but bytes were left over: the writer used another schema.
    #[error("{}: {extra} bytes left after decoding with schema id {id}", at(.origin))]
    TrailingBytes {
        /// The record, where known.
        origin: Option<Origin>,
        /// The writer schema id.
        id: u32,
        /// Bytes left over.
        extra: usize,
    },
    /// The writer schema cannot be read as the job's reader schema.
    #[error("{}: schema id {id} cannot be read as {reader}: {reason}", at(.origin))]
    IncompatibleReader {
        /// The record, where known.
        origin: Option<Origin>,
        /// The writer schema id.
        id: u32,
        /// The reader schema's full name.
        reader: String,
        /// Why.
        reason: String,
    },
}

fn at(origin: &Option<Origin>) -> String {
    match origin {
        Some(o) => format!("the record at {o}"),
        None => "the record".to_owned(),
    }
}

impl Classify for DecodeError {
    fn class(&self) -> ErrorClass {
        match self {
            DecodeError::Registry { source, .. } => source.class(),
            _ => ErrorClass::Permanent,
        }
    }
}

/// Errors loading the catalog or the file registry, or registering schemas.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A TOML file is invalid (the message names the key and line).
    #[error("invalid {}: {reason}", path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's words.
        reason: String,
    },
    /// A topic entry of the catalog is wrong.
    #[error("catalog topic `{topic}`: {reason}")]
    Topic {
        /// The topic name as written.
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// An Avro schema file does not parse.
    #[error("schema {}: {reason}", path.display())]
    Schema {
        /// The file.
        path: PathBuf,
        /// The Avro library's words.
        reason: String,
    },
    /// A registry entry is wrong.
    #[error("registry entry id {id} ({subject}): {reason}")]
    Registry {
        /// The id.
        id: u32,
        /// The subject.
        subject: String,
        /// What is wrong.
        reason: String,
    },
    /// A value could not be encoded with its schema.
    #[error("cannot encode a value as {schema}: {reason}")]
    Encode {
        /// The schema's full name.
        schema: String,
        /// The Avro library's words.
        reason: String,
    },
}

impl Classify for SchemaError {
    fn class(&self) -> ErrorClass {
        match self {
            SchemaError::Encode { .. } => ErrorClass::Permanent,
            _ => ErrorClass::Fatal,
        }
    }
}

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry could not be reached or kept failing with 5xx.
    #[error("schema registry {url} unavailable after {attempts} attempt(s): {reason}")]
    Unavailable {
        /// The request URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// The registry refused the request.
    #[error("schema registry refused {url} with HTTP {status}: {message}")]
    Rejected {
        /// The request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse {
        /// The request URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The TLS settings of the registry client are unusable (a CA or client-certificate
    /// file that holds nothing usable).
    #[error("schema registry TLS settings: {what} {reason}")]
    Tls {
        /// The setting or file.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Classify for RegistryError {
    fn class(&self) -> ErrorClass {
        match self {
            RegistryError::Unavailable { .. } => ErrorClass::Transient,
            RegistryError::Rejected {
                status: 401 | 403, ..
            } => ErrorClass::Fatal,
            RegistryError::Tls { .. } => ErrorClass::Fatal,
            _ => ErrorClass::Permanent,
        }
    }
}
