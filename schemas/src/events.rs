//! Typed events. Field names and types follow the `.avsc` files exactly; the Avro
//! library maps them through serde.

use serde::{Deserialize, Serialize};

/// A WGS84 position fix (`com.atlasmesh.fleet.Position`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// Heading in degrees from north, if known.
    pub heading_deg: Option<f32>,
}

/// Operating status of a vehicle (`com.atlasmesh.fleet.VehicleStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VehicleStatus {
    /// Carrying out a trip.
    Driving,
    /// Parked, available.
    Idle,
    /// Plugged in.
    Charging,
    /// In the workshop.
    Maintenance,
    /// Not reporting.
    Offline,
}

/// Real-time state of one vehicle (`com.atlasmesh.fleet.VehicleState`, topic
/// `vehicle.state.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehicleState {
    /// Unique id of the event (a UUID).
    pub event_id: String,
    /// The vehicle; also the Kafka key.
    pub vehicle_id: String,
    /// Fleet the vehicle belongs to.
    pub fleet_id: String,
    /// When the vehicle observed this state, ms since the epoch (UTC).
    pub event_time: i64,
    /// Where the vehicle is.
    pub position: Position,
    /// Speed in km/h.
    pub speed_kph: f32,
    /// State of charge in percent.
    pub battery_pct: f32,
    /// What the vehicle is doing.
    pub status: VehicleStatus,
    /// Odometer reading in km, if reported.
    pub odometer_km: Option<f64>,
    /// Driver on board, if any (PII).
    pub driver_id: Option<String>,
    /// Vehicle firmware version.
    pub firmware_version: Option<String>,
}
