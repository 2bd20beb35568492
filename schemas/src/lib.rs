//! # eventbus-schemas
//!
//! The fleet event bus's data contracts: the `.avsc` files and the topic catalog
//! (`topics.toml`) beside this crate, typed events, the Confluent wire format (magic byte
//! 0, a 4-byte big-endian schema id, the Avro binary body), and schema registries (the
//! file registry over `registry.toml`, whose ids are permanent and kept in git).
//!
//! Every decode failure is a typed, Permanent [`DecodeError`] naming the record; no
//! input makes decoding panic.
//!
//! ```
//! use eventbus_schemas::{Decoder, FileRegistry, SchemaRegistry, bundled_dir, encode};
//! use eventbus_schemas::events::{Position, VehicleState, VehicleStatus};
//!
//! let registry = FileRegistry::open(&bundled_dir())?;
//! let (id, schema) = registry.latest_of("vehicle.state.v1-value").expect("registered");
//! let event = VehicleState {
//!     event_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
//!     vehicle_id: "veh-0001".into(),
//!     fleet_id: "fleet-01".into(),
//!     event_time: 1_767_225_600_000,
//!     position: Position { lat: 52.52, lon: 13.405, heading_deg: Some(90.0) },
//!     speed_kph: 42.5,
//!     battery_pct: 81.0,
//!     status: VehicleStatus::Driving,
//!     odometer_km: None,
//!     driver_id: None,
//!     firmware_version: Some("4.2.1".into()),
//! };
//! let bytes = encode(id, &schema, &event)?;
//! let back: VehicleState = Decoder::new(registry).decode_typed(&bytes, None)?;
//! assert_eq!(back, event);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod catalog;
pub mod codec;
pub mod compat;
pub mod error;
pub mod events;
pub mod fast;
pub mod fleet;
pub mod http;
pub mod json;
pub mod registry;
pub mod validate;
pub mod wire;

pub use catalog::{Catalog, Compatibility, TopicSpec};
pub use codec::{Decoder, encode, encode_direct, encode_value};
pub use error::{DecodeError, SchemaError};
pub use registry::{FileRegistry, SchemaRegistry, bundled_dir};
