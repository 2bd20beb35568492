//! # eventbus-schemas
//!
//! Typed Avro events of the fleet event bus, the Confluent wire format (magic byte 0, a
//! 4-byte big-endian schema id, the Avro binary body), schema registries (a file registry
//! over `schemas/` and a Confluent REST client), the topic catalog as code, and
//! compatibility checks. Nothing is implemented yet: this crate is the seam the schemas
//! issue fills; until then jobs handle raw bytes.
#![forbid(unsafe_code)]
