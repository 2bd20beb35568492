//! Typed events. Field names and types follow the `.avsc` files exactly; the Avro
//! library maps them through serde.

use std::collections::HashMap;

use apache_avro::Decimal;
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

/// What per-fleet aggregates read of a [`VehicleState`]: the same record, decoded
/// without the fields they do not use (the event id, the position, the odometer, the
/// driver and the firmware are checked, not kept).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VehicleReading {
    /// The vehicle.
    pub vehicle_id: String,
    /// Fleet the vehicle belongs to.
    pub fleet_id: String,
    /// When the vehicle observed this state, ms since the epoch (UTC).
    pub event_time: i64,
    /// Speed in km/h.
    pub speed_kph: f32,
    /// State of charge in percent.
    pub battery_pct: f32,
    /// What the vehicle is doing.
    pub status: VehicleStatus,
}

/// Kinds of vehicle command (`com.atlasmesh.fleet.CommandType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CommandType {
    /// Lock the doors.
    Lock,
    /// Unlock the doors.
    Unlock,
    /// Start charging.
    StartCharging,
    /// Stop charging.
    StopCharging,
    /// Take a new route.
    Reroute,
    /// Stop now.
    EmergencyStop,
    /// Install a firmware update.
    OtaUpdate,
}

/// A control command sent to one vehicle (`com.atlasmesh.fleet.VehicleCommand`, topic
/// `vehicle.commands.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehicleCommand {
    /// Unique id of the command (a UUID).
    pub command_id: String,
    /// Target vehicle; also the Kafka key.
    pub vehicle_id: String,
    /// When the command was issued, ms since the epoch (UTC).
    pub issued_at: i64,
    /// What the vehicle is asked to do.
    pub command_type: CommandType,
    /// Command arguments by name.
    pub parameters: HashMap<String, String>,
    /// Service or operator that issued the command (PII when an operator).
    pub issued_by: String,
    /// After this time (ms since the epoch) the vehicle must ignore the command.
    pub expires_at: Option<i64>,
}

/// Kinds of fleet operation (`com.atlasmesh.fleet.OperationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationType {
    /// A trip was booked.
    TripCreated,
    /// A trip began.
    TripStarted,
    /// A trip ended at its destination.
    TripCompleted,
    /// A trip was called off.
    TripCancelled,
    /// A vehicle was assigned to a trip.
    DispatchAssigned,
    /// A region's capacity changed.
    CapacityUpdated,
}

/// A WGS84 point (`com.atlasmesh.fleet.GeoPoint`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
}

/// A passenger trip (`com.atlasmesh.fleet.Trip`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    /// Trip id.
    pub trip_id: String,
    /// Vehicle serving the trip, once assigned.
    pub vehicle_id: Option<String>,
    /// Pick-up point.
    pub origin: GeoPoint,
    /// Drop-off point.
    pub destination: GeoPoint,
    /// Passengers on the trip.
    pub passenger_count: i32,
    /// Fare in the fleet's currency (`decimal(10,2)`), when known; see
    /// [`fare_from_cents`] and [`Trip::fare_cents`].
    pub fare: Option<Decimal>,
}

impl Trip {
    /// The fare in cents, when set and representable.
    pub fn fare_cents(&self) -> Option<i64> {
        let bytes: Vec<u8> = self.fare.as_ref()?.try_into().ok()?;
        if bytes.is_empty() || bytes.len() > 8 {
            return None;
        }
        // Big-endian two's complement, sign-extended to 8 bytes.
        let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
        let mut wide = [fill; 8];
        wide[8 - bytes.len()..].copy_from_slice(&bytes);
        Some(i64::from_be_bytes(wide))
    }
}

/// A `decimal(10,2)` fare from cents, as wide as the precision needs (5 bytes).
pub fn fare_from_cents(cents: i64) -> Decimal {
    Decimal::from(cents.to_be_bytes()[3..].to_vec())
}

/// A vehicle assigned to a trip (`com.atlasmesh.fleet.Dispatch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dispatch {
    /// Trip id.
    pub trip_id: String,
    /// Assigned vehicle.
    pub vehicle_id: String,
    /// Estimated seconds to pick-up.
    pub eta_seconds: i32,
}

/// Vehicles available in a region (`com.atlasmesh.fleet.Capacity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Region name.
    pub region: String,
    /// Vehicles free to take a trip.
    pub available_vehicles: i32,
    /// Vehicles in service in the region.
    pub total_vehicles: i32,
}

/// An operational event of the fleet manager (`com.atlasmesh.fleet.FleetOperation`,
/// topic `fleet.operations.v1`). `operation_type` says which optional part is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetOperation {
    /// Unique id of the event (a UUID).
    pub operation_id: String,
    /// Fleet concerned; also the Kafka key.
    pub fleet_id: String,
    /// When it happened, ms since the epoch (UTC).
    pub event_time: i64,
    /// Which operation this is.
    pub operation_type: OperationType,
    /// Set for `TRIP_*` operations.
    pub trip: Option<Trip>,
    /// Set for `DISPATCH_ASSIGNED`.
    pub dispatch: Option<Dispatch>,
    /// Set for `CAPACITY_UPDATED`.
    pub capacity: Option<Capacity>,
    /// Why a trip was cancelled.
    pub cancel_reason: Option<String>,
}

/// Severity of a safety event (`com.atlasmesh.fleet.Severity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    /// Can wait.
    Low,
    /// Needs attention.
    Medium,
    /// Needs attention now.
    High,
    /// Life or property at risk.
    Critical,
}

/// Kinds of emergency (`com.atlasmesh.fleet.EmergencyKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EmergencyKind {
    /// A collision.
    Collision,
    /// A fire.
    Fire,
    /// A medical emergency on board.
    Medical,
    /// A vehicle system failed.
    SystemFailure,
    /// Raised by hand.
    ManualAlert,
}

/// A safety emergency (`com.atlasmesh.fleet.EmergencyEvent`, topic
/// `safety.emergency.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmergencyEvent {
    /// Unique id of the emergency (a UUID).
    pub emergency_id: String,
    /// Vehicle concerned; also the Kafka key.
    pub vehicle_id: String,
    /// When it was raised, ms since the epoch (UTC).
    pub event_time: i64,
    /// How urgent it is.
    pub severity: Severity,
    /// What happened.
    pub kind: EmergencyKind,
    /// Latitude in degrees where it was raised.
    pub lat: f64,
    /// Longitude in degrees where it was raised.
    pub lon: f64,
    /// People on board.
    pub occupants: i32,
    /// Free text from the vehicle or the operator.
    pub description: Option<String>,
    /// Operator who acknowledged it (PII).
    pub acknowledged_by: Option<String>,
}

/// One sensor reading (`com.atlasmesh.fleet.Reading`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Sensor name, e.g. `motor_temp_c`.
    pub sensor: String,
    /// When it was read, ms since the epoch (UTC).
    pub ts: i64,
    /// The reading.
    pub value: f64,
    /// Unit, when not implied by the sensor name.
    pub unit: Option<String>,
}

/// A batch of raw sensor readings from one vehicle (`com.atlasmesh.fleet.TelemetryBatch`,
/// topic `telemetry.raw.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    /// Unique id of the batch (a UUID).
    pub batch_id: String,
    /// Reporting vehicle; also the Kafka key.
    pub vehicle_id: String,
    /// First reading time covered, ms since the epoch (UTC).
    pub window_start: i64,
    /// Last reading time covered, ms since the epoch (UTC).
    pub window_end: i64,
    /// The readings, in time order.
    pub readings: Vec<Reading>,
}

/// Severity of an alert (`com.atlasmesh.fleet.AlertSeverity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertSeverity {
    /// For information.
    Info,
    /// Worth a look.
    Warning,
    /// Act now.
    Critical,
}

/// An alert raised by the alerting job (`com.atlasmesh.fleet.Alert`, topic
/// `vehicle.alerts.v1`), pointing back at the event that triggered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Unique id of the alert (a UUID).
    pub alert_id: String,
    /// Vehicle concerned; also the Kafka key.
    pub vehicle_id: String,
    /// Fleet of the vehicle.
    pub fleet_id: String,
    /// When the alert was raised, ms since the epoch (UTC).
    pub raised_at: i64,
    /// How urgent it is.
    pub severity: AlertSeverity,
    /// Name of the rule that fired.
    pub rule: String,
    /// Human-readable description.
    pub message: String,
    /// Topic of the event that triggered it.
    pub source_topic: String,
    /// Partition of that event.
    pub source_partition: i32,
    /// Offset of that event.
    pub source_offset: i64,
}

/// Per-fleet, per-minute aggregates (`com.atlasmesh.fleet.FleetMinute`, topic
/// `analytics.fleet_minute.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetMinute {
    /// The fleet; also the Kafka key.
    pub fleet_id: String,
    /// Start of the minute, ms since the epoch (UTC).
    pub minute: i64,
    /// Distinct vehicles that reported in the minute.
    pub vehicles_active: i32,
    /// Vehicle-state events in the minute.
    pub events: i64,
    /// Mean speed of driving vehicles.
    pub avg_speed_kph: f64,
    /// Lowest state of charge seen.
    pub min_battery_pct: f64,
    /// Events per vehicle status.
    pub status_counts: HashMap<String, i64>,
}

/// What a [`FleetMinutePartial`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PartialKind {
    /// The aggregates of one fleet-minute over one source partition.
    Partial,
    /// Every window of the source partition ending at or before `watermark` is delivered.
    Watermark,
    /// The final stage has delivered every fleet-minute ending at or before `watermark`.
    Progress,
}

/// The analytics job's internal record (`com.atlasmesh.fleet.FleetMinutePartial`, topics
/// `analytics.fleet_minute_partials.v1` and `analytics.fleet_minute_progress.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetMinutePartial {
    /// What this record is.
    pub kind: PartialKind,
    /// Partition of `vehicle.state.v1` (partials, watermarks) or of the partials topic
    /// (progress).
    pub source_partition: i32,
    /// How many partitions `vehicle.state.v1` has.
    pub source_partitions: i32,
    /// The fleet (partials); also the Kafka key.
    pub fleet_id: String,
    /// Start of the minute, ms since the epoch (partials).
    pub minute: i64,
    /// See [`PartialKind`]; `i64::MAX` at the end of input.
    pub watermark: i64,
    /// The source partition has had nothing new for the idle timeout (watermarks).
    pub idle: bool,
    /// Events in the fleet-minute.
    pub events: i64,
    /// Distinct vehicles, sorted.
    pub vehicles: Vec<String>,
    /// Events with status `DRIVING`.
    pub driving_events: i64,
    /// Sum of `speed_kph` over `DRIVING` events.
    pub driving_speed_sum: f64,
    /// Lowest `battery_pct`.
    pub min_battery_pct: f64,
    /// Events per vehicle status.
    pub status_counts: HashMap<String, i64>,
}
