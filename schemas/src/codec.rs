//! Encoding and decoding records in the wire format through a registry.

use std::sync::Arc;

use apache_avro::types::Value;
use apache_avro::{Schema, from_avro_datum, to_avro_datum};
use eventbus_runtime::Origin;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{DecodeError, SchemaError};
use crate::registry::SchemaRegistry;
use crate::wire;

/// Decodes wire-format bytes: the writer schema comes from the registry by id, and the
/// value is resolved into the job's reader schema when one is set (Avro schema
/// resolution: added fields take their defaults, removed fields are skipped, numbers
/// are promoted).
#[derive(Debug, Clone)]
pub struct Decoder<R> {
    registry: R,
    reader: Option<Arc<Schema>>,
}

impl<R: SchemaRegistry> Decoder<R> {
    /// Decodes into each record's own writer schema.
    pub fn new(registry: R) -> Self {
        Self {
            registry,
            reader: None,
        }
    }

    /// Decodes into `reader`.
    pub fn with_reader(registry: R, reader: Arc<Schema>) -> Self {
        Self {
            registry,
            reader: Some(reader),
        }
    }

    /// The registry this decoder looks writer schemas up in.
    pub fn registry(&self) -> &R {
        &self.registry
    }

    /// Decodes one record's bytes; `origin` names it in errors.
    ///
    /// # Errors
    /// A [`DecodeError`] for short or foreign bytes, an unknown id, a body that does not
    /// match, or a writer the reader cannot read. Never panics on any input.
    pub fn decode(
        &self,
        bytes: &[u8],
        origin: Option<&Origin>,
    ) -> Result<(u32, Value), DecodeError> {
        let (id, body) = wire::split(bytes, origin)?;
        let writer = self
            .registry
            .schema(id)
            .map_err(|source| DecodeError::Registry {
                origin: origin.cloned(),
                id,
                source,
            })?
            .ok_or_else(|| DecodeError::UnknownSchema {
                origin: origin.cloned(),
                id,
            })?;
        let mut rest = body;
        let value =
            from_avro_datum(&writer, &mut rest, None).map_err(|e| DecodeError::BadBody {
                origin: origin.cloned(),
                id,
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes {
                origin: origin.cloned(),
                id,
                extra: rest.len(),
            });
        }
        let Some(reader) = &self.reader else {
            return Ok((id, value));
        };
        let resolved = value.resolve_schemata(reader, Vec::new()).map_err(|e| {
            DecodeError::IncompatibleReader {
                origin: origin.cloned(),
                id,
                reader: schema_name(reader),
                reason: e.to_string(),
            }
        })?;
        Ok((id, resolved))
    }

    /// Decodes one record into a typed event.
    ///
    /// # Errors
    /// As [`Decoder::decode`], or [`DecodeError::IncompatibleReader`] when the value
    /// does not fit the type.
    pub fn decode_typed<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        origin: Option<&Origin>,
    ) -> Result<T, DecodeError> {
        let (id, value) = self.decode(bytes, origin)?;
        apache_avro::from_value::<T>(&value).map_err(|e| DecodeError::IncompatibleReader {
            origin: origin.cloned(),
            id,
            reader: std::any::type_name::<T>().to_owned(),
            reason: e.to_string(),
        })
    }
}

/// The full name of a named schema, or its kind.
pub fn schema_name(schema: &Schema) -> String {
    match schema.name() {
        Some(n) => n.fullname(None),
        None => format!("{schema:?}").chars().take(40).collect(),
    }
}

/// Encodes a value in the wire format with schema `id`.
///
/// # Errors
/// [`SchemaError::Encode`] when the value does not fit the schema.
pub fn encode_value(id: u32, schema: &Schema, value: Value) -> Result<Vec<u8>, SchemaError> {
    let encode_error = |e: apache_avro::Error| SchemaError::Encode {
        schema: schema_name(schema),
        reason: e.to_string(),
    };
    let resolved = value.resolve(schema).map_err(encode_error)?;
    let body = to_avro_datum(schema, resolved).map_err(encode_error)?;
    Ok(wire::frame(id, &body))
}

/// Encodes a typed event in the wire format with schema `id`, serializing straight into
/// the schema (apache-avro's schema-aware serializer) instead of through a [`Value`]:
/// several times faster than [`encode`], for schemas without named-type references
/// (each named type defined inline, as in every committed schema).
///
/// # Errors
/// [`SchemaError::Encode`] when the event does not fit the schema.
pub fn encode_direct<T: Serialize>(
    id: u32,
    schema: &Schema,
    event: &T,
) -> Result<Vec<u8>, SchemaError> {
    let mut body = Vec::with_capacity(128);
    apache_avro::write_avro_datum_ref(schema, event, &mut body).map_err(|e| {
        SchemaError::Encode {
            schema: schema_name(schema),
            reason: e.to_string(),
        }
    })?;
    Ok(wire::frame(id, &body))
}

/// Encodes a typed event in the wire format with schema `id`.
///
/// # Errors
/// [`SchemaError::Encode`] when the event does not fit the schema.
pub fn encode<T: Serialize>(id: u32, schema: &Schema, event: &T) -> Result<Vec<u8>, SchemaError> {
    let value = apache_avro::to_value(event).map_err(|e| SchemaError::Encode {
        schema: schema_name(schema),
        reason: e.to_string(),
    })?;
    encode_value(id, schema, value)
}
