//! The first stage: per source partition, each fleet-minute's partial aggregates, and the
//! records that carry them (and the partition's watermark) to the partials topic.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use apache_avro::Schema;
use eventbus_operators::KafkaSink;
use eventbus_operators::window::Aggregate;
use eventbus_operators::windowed::WindowResult;
use eventbus_runtime::{Ack, Record, Sink, SinkError};
use eventbus_schemas::FileRegistry;
use eventbus_schemas::events::{
    FleetMinute, FleetMinutePartial, PartialKind, VehicleReading, VehicleStatus,
};
use eventbus_schemas::fast::VehicleStateDecoder;

/// What one vehicle-state event adds to its fleet-minute.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The vehicle.
    pub vehicle_id: String,
    /// `speed_kph`.
    pub speed_kph: f32,
    /// `battery_pct`.
    pub battery_pct: f32,
    /// The status symbol.
    pub status: &'static str,
}

/// An input record as the first stage takes it: what the aggregates read, and the
/// record's bytes, which the late output decodes again in full.
#[derive(Debug, Clone)]
pub struct Input {
    /// The fields the aggregates read.
    pub reading: VehicleReading,
    /// The record's value as it came.
    pub raw: bytes::Bytes,
}

impl Input {
    /// Takes the input apart into its fleet (the key) and its reading, moving both.
    pub fn split(self) -> (String, Reading) {
        let v = self.reading;
        let reading = Reading {
            vehicle_id: v.vehicle_id,
            speed_kph: v.speed_kph,
            battery_pct: v.battery_pct,
            status: status_symbol(v.status),
        };
        (v.fleet_id, reading)
    }
}

fn status_symbol(status: VehicleStatus) -> &'static str {
    use VehicleStatus as S;
    match status {
        S::Driving => "DRIVING",
        S::Idle => "IDLE",
        S::Charging => "CHARGING",
        S::Maintenance => "MAINTENANCE",
        S::Offline => "OFFLINE",
    }
}

/// The running aggregates of a fleet-minute, over some of its events.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetAcc {
    /// Events.
    pub events: i64,
    /// Distinct vehicles.
    pub vehicles: BTreeSet<String>,
    /// Events with status DRIVING.
    pub driving_events: i64,
    /// Sum of their speeds.
    pub driving_speed_sum: f64,
    /// Lowest battery seen; +inf before the first event.
    pub min_battery_pct: f64,
    /// Events per status.
    pub status_counts: BTreeMap<String, i64>,
}

impl FleetAcc {
    /// The aggregates of no event.
    pub fn empty() -> Self {
        Self {
            min_battery_pct: f64::INFINITY,
            ..Self::default()
        }
    }

    /// Adds the aggregates of other events. Every field but the speed sum is exact in
    /// any order; the sum is a double, and the final stage merges in partition order.
    pub fn merge(&mut self, other: &Self) {
        self.add_totals(
            other.events,
            other.driving_events,
            other.driving_speed_sum,
            other.min_battery_pct,
        );
        self.vehicles.extend(other.vehicles.iter().cloned());
        for (status, n) in &other.status_counts {
            *self.status_counts.entry(status.clone()).or_default() += n;
        }
    }

    /// Adds other events' counts, speed sum and lowest battery: everything but the
    /// vehicles and the statuses, which [`FleetAcc::merge`] and [`result_of`] keep
    /// differently.
    fn add_totals(&mut self, events: i64, driving_events: i64, speed_sum: f64, min_battery: f64) {
        self.events += events;
        self.driving_events += driving_events;
        self.driving_speed_sum += speed_sum;
        self.min_battery_pct = self.min_battery_pct.min(min_battery);
    }

    /// The partial record of this accumulator.
    pub fn to_partial(
        &self,
        fleet_id: &str,
        minute: i64,
        source_partition: i32,
        source_partitions: i32,
    ) -> FleetMinutePartial {
        FleetMinutePartial {
            kind: PartialKind::Partial,
            source_partition,
            source_partitions,
            fleet_id: fleet_id.to_owned(),
            minute,
            watermark: 0,
            idle: false,
            events: self.events,
            vehicles: self.vehicles.iter().cloned().collect(),
            driving_events: self.driving_events,
            driving_speed_sum: self.driving_speed_sum,
            min_battery_pct: self.min_battery_pct,
            status_counts: self
                .status_counts
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }

    /// The published result.
    pub fn finish(&self, fleet_id: &str, minute: i64) -> FleetMinute {
        FleetMinute {
            fleet_id: fleet_id.to_owned(),
            minute,
            vehicles_active: i32::try_from(self.vehicles.len()).unwrap_or(i32::MAX),
            events: self.events,
            avg_speed_kph: if self.driving_events > 0 {
                self.driving_speed_sum / self.driving_events as f64
            } else {
                0.0
            },
            min_battery_pct: if self.events > 0 {
                self.min_battery_pct
            } else {
                0.0
            },
            status_counts: self
                .status_counts
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }
}

/// The result of a fleet-minute from its partials (one per source partition, in
/// partition order, so the speed sum adds up in the same order every time). Reads the
/// partials where they are: no vehicle id is copied to count the distinct ones.
pub(super) fn result_of<'a>(
    fleet_id: &str,
    minute: i64,
    partials: impl IntoIterator<Item = &'a FleetMinutePartial>,
) -> FleetMinute {
    let mut vehicles: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut statuses: BTreeMap<&str, i64> = BTreeMap::new();
    let mut acc = FleetAcc::empty();
    for p in partials {
        acc.add_totals(
            p.events,
            p.driving_events,
            p.driving_speed_sum,
            p.min_battery_pct,
        );
        vehicles.extend(p.vehicles.iter().map(String::as_str));
        for (status, n) in &p.status_counts {
            *statuses.entry(status).or_default() += n;
        }
    }
    let mut result = acc.finish(fleet_id, minute);
    result.vehicles_active = i32::try_from(vehicles.len()).unwrap_or(i32::MAX);
    result.status_counts = statuses
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    result
}

/// The fleet-minute aggregate, for [`eventbus_operators::windowed::Windowed`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetAggregate;

impl Aggregate for FleetAggregate {
    type In = Reading;
    type Acc = FleetAcc;
    type Out = FleetAcc;

    fn create(&self) -> FleetAcc {
        FleetAcc::empty()
    }

    fn add(&self, acc: &mut FleetAcc, r: &Reading) {
        acc.events += 1;
        if !acc.vehicles.contains(&r.vehicle_id) {
            acc.vehicles.insert(r.vehicle_id.clone());
        }
        if r.status == "DRIVING" {
            acc.driving_events += 1;
            acc.driving_speed_sum += f64::from(r.speed_kph);
        }
        acc.min_battery_pct = acc.min_battery_pct.min(f64::from(r.battery_pct));
        match acc.status_counts.get_mut(r.status) {
            Some(n) => *n += 1,
            None => {
                acc.status_counts.insert(r.status.to_owned(), 1);
            }
        }
    }

    fn merge(&self, mut a: FleetAcc, b: FleetAcc) -> FleetAcc {
        a.merge(&b);
        a
    }

    fn finish(&self, acc: &FleetAcc) -> FleetAcc {
        acc.clone()
    }

    /// An estimate: a tree node's share and a short string per vehicle and status.
    fn size(&self, acc: &FleetAcc) -> usize {
        std::mem::size_of::<FleetAcc>() + (acc.vehicles.len() + acc.status_counts.len()) * 64
    }
}

/// Most source partitions a partial may name: the final stage walks them all per record,
/// so a record from another producer claiming billions must not be taken.
pub(super) const MAX_SOURCE_PARTITIONS: i32 = 100_000;

/// Refuses a partials-topic record our first stage never writes: a source partition
/// count out of range, or a source partition outside it (as the registry's
/// `FleetMinutePartial`, so it is dead-lettered with that reason).
///
/// # Errors
/// [`eventbus_schemas::DecodeError::IncompatibleReader`] naming the field.
pub(super) fn check(p: &FleetMinutePartial) -> Result<(), eventbus_schemas::DecodeError> {
    let reason = if !(1..=MAX_SOURCE_PARTITIONS).contains(&p.source_partitions)
        && p.kind != PartialKind::Progress
    {
        Some(format!(
            "source_partitions is {}, not in 1..={MAX_SOURCE_PARTITIONS}",
            p.source_partitions
        ))
    } else if p.kind != PartialKind::Progress
        && !(0..p.source_partitions).contains(&p.source_partition)
    {
        Some(format!(
            "source_partition is {}, not in 0..{}",
            p.source_partition, p.source_partitions
        ))
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(eventbus_schemas::DecodeError::IncompatibleReader {
            origin: None,
            id: 0,
            reader: "FleetMinutePartial".to_owned(),
            reason,
        }),
    }
}

/// The partials topic's partition of a fleet: the same for every process and run, so a
/// fleet's partials and the final stage's state of it meet in one partition.
pub fn partition_of(fleet_id: &str, partitions: i32) -> i32 {
    // FNV-1a: stable across builds and platforms, unlike the std hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in fleet_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    i32::try_from(h % partitions.max(1).unsigned_abs()).unwrap_or(0)
}

/// Writes [`FleetMinutePartial`]s to the partials topic (wire format).
#[derive(Clone)]
pub struct PartialWriter {
    /// The producer, partitioning by the record's partition number.
    pub sink: KafkaSink,
    /// Registry id of the partials subject.
    pub id: u32,
    /// The schema.
    pub schema: Arc<Schema>,
    /// Partitions of the partials topic.
    pub partitions: i32,
    /// Partitions of the input topic.
    pub source_partitions: i32,
}

impl std::fmt::Debug for PartialWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialWriter")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl PartialWriter {
    /// Sends `value` to partition `partition`, keyed by `key`; `ack` settles with its
    /// delivery.
    pub async fn send(
        &self,
        partition: i32,
        key: &str,
        value: &FleetMinutePartial,
        ack: Ack,
    ) -> Result<(), SinkError> {
        let bytes = match eventbus_schemas::encode_direct(self.id, &self.schema, value) {
            Ok(b) => bytes::Bytes::from(b),
            Err(e) => {
                let origin = ack.origin();
                ack.fail(SinkError::Delivery {
                    sink: "analytics partials",
                    origin,
                    reason: format!("cannot encode a FleetMinutePartial: {e}"),
                    class: eventbus_runtime::ErrorClass::Permanent,
                });
                return Ok(());
            }
        };
        self.send_bytes(partition, key, bytes, ack).await
    }

    async fn send_bytes(
        &self,
        partition: i32,
        key: &str,
        bytes: bytes::Bytes,
        ack: Ack,
    ) -> Result<(), SinkError> {
        let mut record = Record::new(Arc::<str>::from(""), partition, -1, bytes);
        record.key = Some(bytes::Bytes::copy_from_slice(key.as_bytes()));
        self.sink.send(record, ack).await
    }

    /// A watermark record of `source_partition` for every partials partition.
    pub async fn watermark(
        &self,
        source_partition: i32,
        closed_through: i64,
        idle: bool,
    ) -> Vec<eventbus_runtime::sink::AckOutcome> {
        let mut value =
            FleetAcc::empty().to_partial("", 0, source_partition, self.source_partitions);
        value.kind = PartialKind::Watermark;
        value.watermark = closed_through;
        value.idle = idle;
        value.min_battery_pct = 0.0;
        let mut outcomes = Vec::new();
        let bytes = match eventbus_schemas::encode_direct(self.id, &self.schema, &value) {
            Ok(b) => bytes::Bytes::from(b),
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a watermark");
                return outcomes;
            }
        };
        for r in 0..self.partitions {
            let origin = eventbus_runtime::Origin {
                topic: Arc::from("analytics watermark"),
                partition: source_partition,
                offset: -1,
            };
            let (ack, outcome) = Ack::channel(origin);
            if let Err(e) = self.send_bytes(r, "", bytes.clone(), ack).await {
                tracing::warn!(error = %e, "cannot send a watermark");
            }
            outcomes.push(outcome);
        }
        outcomes
    }
}

impl Sink<WindowResult<String, FleetAcc>> for PartialWriter {
    async fn send(
        &self,
        record: Record<WindowResult<String, FleetAcc>>,
        ack: Ack,
    ) -> Result<(), SinkError> {
        let r = &record.value;
        let value = r.value.to_partial(
            &r.key,
            r.window.start,
            record.partition,
            self.source_partitions,
        );
        let partition = partition_of(&r.key, self.partitions);
        PartialWriter::send(self, partition, &r.key, &value, ack).await
    }

    async fn flush(&self) -> Result<(), SinkError> {
        <KafkaSink as Sink<bytes::Bytes>>::flush(&self.sink).await
    }
}

/// Sends late input records to the side-output topic, encoded again with the catalog's
/// latest `VehicleState` schema, with their key, headers and timestamp.
#[derive(Clone)]
pub struct LateWriter {
    /// The producer (by key).
    pub sink: KafkaSink,
    /// Registry id and schema of `VehicleState`.
    pub schema: (u32, Arc<Schema>),
    /// Decodes a late record in full again (the first stage keeps only a reading).
    pub decoder: Arc<VehicleStateDecoder<Arc<FileRegistry>>>,
}

impl Sink<Input> for LateWriter {
    async fn send(&self, record: Record<Input>, ack: Ack) -> Result<(), SinkError> {
        let encoded = self
            .decoder
            .decode(&record.value.raw, Some(&record.origin()))
            .map_err(|e| e.to_string())
            .and_then(|event| {
                eventbus_schemas::encode(self.schema.0, &self.schema.1, &event)
                    .map_err(|e| format!("cannot encode a late VehicleState again: {e}"))
            });
        match encoded {
            Ok(bytes) => {
                self.sink
                    .send(record.with_value(bytes::Bytes::from(bytes)), ack)
                    .await
            }
            Err(reason) => {
                let origin = ack.origin();
                ack.fail(SinkError::Delivery {
                    sink: "analytics late records",
                    origin,
                    reason,
                    class: eventbus_runtime::ErrorClass::Permanent,
                });
                Ok(())
            }
        }
    }

    async fn flush(&self) -> Result<(), SinkError> {
        <KafkaSink as Sink<bytes::Bytes>>::flush(&self.sink).await
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn reading() -> impl Strategy<Value = Reading> {
        (0u8..6, 0.0f32..130.0, 0.0f32..100.0, 0usize..5).prop_map(|(v, speed, battery, s)| {
            Reading {
                vehicle_id: format!("veh-{v}"),
                speed_kph: speed,
                battery_pct: battery,
                status: ["DRIVING", "IDLE", "CHARGING", "MAINTENANCE", "OFFLINE"][s],
            }
        })
    }

    #[test]
    fn partials_naming_impossible_source_partitions_are_refused() {
        let ok = FleetAcc::empty().to_partial("f", 0, 3, 12);
        assert!(check(&ok).is_ok());
        for (p, n) in [(0, 0), (0, -5), (0, i32::MAX), (12, 12), (-1, 12)] {
            let bad = FleetAcc::empty().to_partial("f", 0, p, n);
            let e = check(&bad).expect_err("refused").to_string();
            assert!(e.contains("source_partition"), "{e}");
        }
    }

    proptest! {
        /// However a fleet-minute's events are split into partials and in whatever
        /// order the partials are merged, the result is the same: integers exactly,
        /// the mean speed within 1e-9 relative.
        #[test]
        fn merging_partials_in_any_order_gives_the_same_result(
            readings in prop::collection::vec(reading(), 1..60),
            cuts in prop::collection::vec(0usize..60, 0..5),
            order in prop::collection::vec(any::<u64>(), 6),
        ) {
            let agg = FleetAggregate;
            let mut whole = agg.create();
            readings.iter().for_each(|r| agg.add(&mut whole, r));
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % readings.len()).collect();
            bounds.extend([0, readings.len()]);
            bounds.sort_unstable();
            bounds.dedup();
            let mut parts: Vec<FleetAcc> = bounds
                .windows(2)
                .map(|w| {
                    let mut acc = agg.create();
                    readings[w[0]..w[1]].iter().for_each(|r| agg.add(&mut acc, r));
                    acc
                })
                .collect();
            // As the final stage sees them: wire records, merged in partition order.
            let records: Vec<FleetMinutePartial> = parts
                .iter()
                .enumerate()
                .map(|(i, acc)| acc.to_partial("f", 0, i as i32, parts.len() as i32))
                .collect();
            let fin = result_of("f", 0, &records);
            // Another order: sorted by an arbitrary key per partial.
            let mut keyed: Vec<(u64, usize)> =
                (0..parts.len()).map(|i| (order[i % order.len()], i)).collect();
            keyed.sort_unstable();
            let parts: Vec<FleetAcc> = keyed
                .into_iter()
                .map(|(_, i)| std::mem::replace(&mut parts[i], FleetAcc::empty()))
                .collect();
            let merged = parts.into_iter().fold(FleetAcc::empty(), |a, b| agg.merge(a, b));
            let a = whole.finish("f", 0);
            for b in [merged.finish("f", 0), fin] {
                prop_assert_eq!(a.vehicles_active, b.vehicles_active);
                prop_assert_eq!(a.events, b.events);
                prop_assert_eq!(a.min_battery_pct, b.min_battery_pct);
                prop_assert_eq!(&a.status_counts, &b.status_counts);
                let tolerance = 1e-9 * a.avg_speed_kph.abs().max(b.avg_speed_kph.abs());
                prop_assert!((a.avg_speed_kph - b.avg_speed_kph).abs() <= tolerance);
            }
        }
    }
}
