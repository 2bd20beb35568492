//! Synthetic fleet events for the demo, the benchmarks and the tests.
//!
//! A fleet of a few hundred vehicles in a handful of cities: each event moves one
//! vehicle a little, drains or charges its battery, and sometimes changes its status.
//! The same seed always gives the same stream. Events are the typed Avro
//! [`VehicleState`]; each event's id encodes its position in the stream (see
//! [`seq_of`]), so a reader can find losses and duplicates.

pub use crate::events::{Position, VehicleState, VehicleStatus};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The event id of the `seq`-th generated event: a UUID whose last group is `seq`.
pub fn event_id(seq: u64) -> String {
    format!("00000000-0000-4000-8000-{seq:012x}")
}

/// The stream position encoded in an id made by [`event_id`].
pub fn seq_of(event_id: &str) -> Option<u64> {
    let last = event_id.rsplit('-').next()?;
    u64::from_str_radix(last, 16).ok()
}

struct Vehicle {
    fleet: usize,
    lat: f64,
    lon: f64,
    battery: f64,
    status: VehicleStatus,
}

const CITIES: [(f64, f64); 6] = [
    (52.52, 13.405),
    (48.137, 11.575),
    (53.551, 9.993),
    (50.110, 8.682),
    (51.227, 6.773),
    (48.775, 9.182),
];
const FIRMWARE: [&str; 3] = ["4.1.7", "4.2.0", "4.2.1"];
const START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// An endless, deterministic stream of [`VehicleState`] events.
pub struct FleetGenerator {
    rng: SmallRng,
    vehicles: Vec<Vehicle>,
    seq: u64,
    clock_ms: i64,
}

impl FleetGenerator {
    /// A fleet of `vehicles` vehicles (at least one), seeded.
    pub fn new(vehicles: usize, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let vehicles = (0..vehicles.max(1))
            .map(|i| {
                let fleet = i % CITIES.len();
                let (lat, lon) = CITIES[fleet];
                Vehicle {
                    fleet,
                    lat: lat + rng.random_range(-0.08..0.08),
                    lon: lon + rng.random_range(-0.12..0.12),
                    battery: rng.random_range(35.0..100.0),
                    status: VehicleStatus::Idle,
                }
            })
            .collect();
        Self {
            rng,
            vehicles,
            seq: 0,
            clock_ms: START_MS,
        }
    }

    /// The Kafka key of an event: its vehicle id.
    pub fn key(event: &VehicleState) -> &str {
        &event.vehicle_id
    }

    fn next_status(&mut self, v: usize) -> VehicleStatus {
        let current = self.vehicles[v].status;
        if self.vehicles[v].battery < 15.0 && current != VehicleStatus::Charging {
            return VehicleStatus::Charging;
        }
        if current == VehicleStatus::Charging && self.vehicles[v].battery < 95.0 {
            return VehicleStatus::Charging;
        }
        // Most events keep the status; a few change it, weighted toward driving.
        if self.rng.random_bool(0.9) {
            return current;
        }
        match self.rng.random_range(0..100) {
            0..=59 => VehicleStatus::Driving,
            60..=87 => VehicleStatus::Idle,
            88..=93 => VehicleStatus::Charging,
            94..=97 => VehicleStatus::Maintenance,
            _ => VehicleStatus::Offline,
        }
    }

    /// Roughly normal noise (sum of uniforms), mean 0, standard deviation `sd`.
    fn noise(&mut self, sd: f64) -> f64 {
        let s: f64 = (0..6).map(|_| self.rng.random::<f64>()).sum();
        // Six uniforms have variance 1/2, so divide by its square root.
        (s - 3.0) * sd / std::f64::consts::FRAC_1_SQRT_2
    }
}

impl Iterator for FleetGenerator {
    type Item = VehicleState;

    fn next(&mut self) -> Option<VehicleState> {
        let v = self.rng.random_range(0..self.vehicles.len());
        let status = self.next_status(v);
        let speed = match status {
            VehicleStatus::Driving => (42.0 + self.noise(14.0)).clamp(3.0, 130.0),
            _ => 0.0,
        };
        let (dlat, dlon) = (self.noise(0.0004), self.noise(0.0006));
        let charge = match status {
            VehicleStatus::Charging => self.rng.random_range(0.5..2.0),
            VehicleStatus::Driving => -self.rng.random_range(0.05..0.3),
            _ => -0.01,
        };
        let heading = self.rng.random_range(0.0f32..360.0).round();
        self.clock_ms += self.rng.random_range(0..40);
        let skew = self.rng.random_range(-2_000..500);
        let vehicle = &mut self.vehicles[v];
        vehicle.status = status;
        vehicle.battery = (vehicle.battery + charge).clamp(0.0, 100.0);
        if status == VehicleStatus::Driving {
            vehicle.lat += dlat;
            vehicle.lon += dlon;
        }
        let seq = self.seq;
        self.seq += 1;
        Some(VehicleState {
            event_id: event_id(seq),
            vehicle_id: format!("veh-{v:04}"),
            fleet_id: format!("fleet-{:02}", vehicle.fleet),
            event_time: self.clock_ms + skew,
            position: Position {
                lat: (vehicle.lat * 1e6).round() / 1e6,
                lon: (vehicle.lon * 1e6).round() / 1e6,
                heading_deg: (status == VehicleStatus::Driving).then_some(heading),
            },
            speed_kph: ((speed * 10.0).round() / 10.0) as f32,
            battery_pct: ((vehicle.battery * 10.0).round() / 10.0) as f32,
            status,
            odometer_km: None,
            driver_id: (status == VehicleStatus::Driving)
                .then(|| format!("drv-{:05}", v * 7 % 10_000)),
            firmware_version: Some(FIRMWARE[v % FIRMWARE.len()].to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_uuids_that_carry_the_sequence() {
        let id = event_id(0xabc_def);
        assert_eq!(id.len(), 36);
        assert_eq!(seq_of(&id), Some(0xabc_def));
        assert_eq!(seq_of("not-a-uuid"), None);
    }

    #[test]
    fn the_stream_is_deterministic_and_plausible() {
        let a: Vec<VehicleState> = FleetGenerator::new(300, 7).take(5000).collect();
        let b: Vec<VehicleState> = FleetGenerator::new(300, 7).take(5000).collect();
        assert_eq!(a, b);
        assert!(
            a.iter()
                .enumerate()
                .all(|(i, e)| seq_of(&e.event_id) == Some(i as u64))
        );
        assert!(a.iter().all(|e| (0.0..=100.0).contains(&e.battery_pct)));
        assert!(a.iter().all(|e| (0.0..=130.0).contains(&e.speed_kph)));
        let driving = a
            .iter()
            .filter(|e| e.status == VehicleStatus::Driving)
            .count();
        assert!(driving > 500, "only {driving} driving events");
        let vehicles: std::collections::HashSet<_> = a.iter().map(|e| &e.vehicle_id).collect();
        assert!(vehicles.len() > 250);
    }
}
