//! Hand-written decoders for the hottest records: `VehicleState` version 1 (whole, or
//! as the `VehicleReading` that per-fleet aggregates need), and the analytics job's own
//! `FleetMinutePartial`.
//!
//! The generic path (apache-avro) builds a name table and a `Value` tree for every
//! record. When the writer schema is exactly the committed one, these read the binary
//! layout straight into the struct instead; any other writer id goes through the
//! generic path, so schema evolution still works.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use apache_avro::Schema;
use eventbus_runtime::Origin;
use serde::de::DeserializeOwned;

use crate::codec::Decoder;
use crate::error::DecodeError;
use crate::events::{
    FleetMinutePartial, PartialKind, Position, VehicleReading, VehicleState, VehicleStatus,
};
use crate::registry::SchemaRegistry;
use crate::wire;

/// A record with a hand-written reader for one committed writer schema.
pub trait Layout: DeserializeOwned {
    /// The committed schema the reader follows, as JSON.
    const SCHEMA: &'static str;
    /// The record's name, for errors.
    const NAME: &'static str;
    /// Reads one record's body; `None` where it does not match the layout.
    fn read(c: &mut Cursor<'_>) -> Option<Self>;
}

/// Decodes `T` records, on the fast path when the writer schema is `T`'s committed one.
pub struct FastDecoder<R, T> {
    generic: Decoder<R>,
    committed: Schema,
    /// Per writer id: is it exactly the committed schema?
    layout: RwLock<HashMap<u32, bool>>,
    /// The last writer id found to be the committed schema (or `u64::MAX`): nearly every
    /// record has it, and it is checked without the lock.
    last_committed: AtomicU64,
    record: PhantomData<fn() -> T>,
}

/// Decodes `VehicleState` records, on the fast path when the writer is version 1.
pub type VehicleStateDecoder<R> = FastDecoder<R, VehicleState>;

/// Decodes `VehicleState` records into the fields per-fleet aggregates read.
pub type VehicleReadingDecoder<R> = FastDecoder<R, VehicleReading>;

/// Decodes the analytics job's `FleetMinutePartial` records.
pub type FleetMinutePartialDecoder<R> = FastDecoder<R, FleetMinutePartial>;

impl<R: SchemaRegistry + Clone, T: Layout> FastDecoder<R, T> {
    /// A decoder over `registry`.
    ///
    /// # Panics
    /// Never: the committed schemas are checked by the tests.
    pub fn new(registry: R) -> Self {
        #[allow(clippy::expect_used)]
        let committed = Schema::parse_str(T::SCHEMA).expect("a committed schema parses");
        Self {
            generic: Decoder::new(registry),
            committed,
            layout: RwLock::new(HashMap::new()),
            last_committed: AtomicU64::new(u64::MAX),
            record: PhantomData,
        }
    }
}

impl<R: SchemaRegistry, T: Layout> FastDecoder<R, T> {
    fn is_committed(&self, id: u32, registry: &R) -> bool {
        if self.last_committed.load(Ordering::Relaxed) == u64::from(id) {
            return true;
        }
        if let Some(&known) = self
            .layout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            if known {
                self.last_committed.store(u64::from(id), Ordering::Relaxed);
            }
            return known;
        }
        // An id the registry cannot resolve goes the generic way, which reports why.
        let Ok(Some(schema)) = registry.schema(id) else {
            return false;
        };
        let same = *schema == self.committed;
        self.layout
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, same);
        same
    }

    /// Decodes one record.
    ///
    /// # Errors
    /// The same [`DecodeError`]s as the generic path. Never panics on any input.
    pub fn decode(&self, bytes: &[u8], origin: Option<&Origin>) -> Result<T, DecodeError> {
        let (id, body) = wire::split(bytes, origin)?;
        if !self.is_committed(id, self.generic.registry()) {
            return self.generic.decode_typed(bytes, origin);
        }
        let mut c = Cursor { buf: body, pos: 0 };
        let record = T::read(&mut c).ok_or_else(|| DecodeError::BadBody {
            origin: origin.cloned(),
            id,
            reason: format!("does not match {} at body byte {}", T::NAME, c.pos),
        })?;
        if c.pos != body.len() {
            return Err(DecodeError::TrailingBytes {
                origin: origin.cloned(),
                id,
                extra: body.len() - c.pos,
            });
        }
        Ok(record)
    }
}

impl Layout for VehicleState {
    const SCHEMA: &'static str = include_str!("../VehicleState.avsc");
    const NAME: &'static str = "VehicleState v1";
    fn read(c: &mut Cursor<'_>) -> Option<Self> {
        read_v1(c)
    }
}

impl Layout for VehicleReading {
    const SCHEMA: &'static str = include_str!("../VehicleState.avsc");
    const NAME: &'static str = "VehicleState v1";
    /// Reads and checks every field as [`read_v1`] does, keeping six.
    fn read(c: &mut Cursor<'_>) -> Option<Self> {
        c.uuid_str()?;
        let vehicle_id = c.string()?.to_owned();
        let fleet_id = c.string()?.to_owned();
        let event_time = c.long()?;
        c.double()?;
        c.double()?;
        c.optional(Cursor::float)?;
        let speed_kph = c.float()?;
        let battery_pct = c.float()?;
        let status = status_v1(c.long()?)?;
        c.optional(Cursor::double)?;
        c.optional(Cursor::string)?;
        c.optional(Cursor::string)?;
        Some(Self {
            vehicle_id,
            fleet_id,
            event_time,
            speed_kph,
            battery_pct,
            status,
        })
    }
}

fn status_v1(index: i64) -> Option<VehicleStatus> {
    Some(match index {
        0 => VehicleStatus::Driving,
        1 => VehicleStatus::Idle,
        2 => VehicleStatus::Charging,
        3 => VehicleStatus::Maintenance,
        4 => VehicleStatus::Offline,
        _ => return None,
    })
}

impl Layout for FleetMinutePartial {
    const SCHEMA: &'static str = include_str!("../FleetMinutePartial.avsc");
    const NAME: &'static str = "FleetMinutePartial";
    fn read(c: &mut Cursor<'_>) -> Option<Self> {
        let kind = match c.long()? {
            0 => PartialKind::Partial,
            1 => PartialKind::Watermark,
            2 => PartialKind::Progress,
            _ => return None,
        };
        let source_partition = c.int()?;
        let source_partitions = c.int()?;
        let fleet_id = c.string()?.to_owned();
        let minute = c.long()?;
        let watermark = c.long()?;
        let idle = c.boolean()?;
        let events = c.long()?;
        let mut vehicles = Vec::new();
        c.blocks(|c| {
            vehicles.push(c.string()?.to_owned());
            Some(())
        })?;
        let driving_events = c.long()?;
        let driving_speed_sum = c.double()?;
        let min_battery_pct = c.double()?;
        let mut status_counts = HashMap::new();
        c.blocks(|c| {
            let status = c.string()?.to_owned();
            status_counts.insert(status, c.long()?);
            Some(())
        })?;
        Some(Self {
            kind,
            source_partition,
            source_partitions,
            fleet_id,
            minute,
            watermark,
            idle,
            events,
            vehicles,
            driving_events,
            driving_speed_sum,
            min_battery_pct,
            status_counts,
        })
    }
}

fn read_v1(c: &mut Cursor<'_>) -> Option<VehicleState> {
    let event_id = c.uuid()?;
    let vehicle_id = c.string()?.to_owned();
    let fleet_id = c.string()?.to_owned();
    let event_time = c.long()?;
    let lat = c.double()?;
    let lon = c.double()?;
    let heading_deg = c.optional(Cursor::float)?;
    let speed_kph = c.float()?;
    let battery_pct = c.float()?;
    let status = status_v1(c.long()?)?;
    let odometer_km = c.optional(Cursor::double)?;
    let driver_id = c.optional(|c| c.string().map(str::to_owned))?;
    let firmware_version = c.optional(|c| c.string().map(str::to_owned))?;
    Some(VehicleState {
        event_id,
        vehicle_id,
        fleet_id,
        event_time,
        position: Position {
            lat,
            lon,
            heading_deg,
        },
        speed_kph,
        battery_pct,
        status,
        odometer_km,
        driver_id,
        firmware_version,
    })
}

/// Reads Avro binary primitives; every method returns `None` on malformed input.
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// A zigzag varint of at most 10 bytes.
    fn long(&mut self) -> Option<i64> {
        let mut n: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            n |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(((n >> 1) as i64) ^ -((n & 1) as i64));
            }
        }
        None
    }

    /// An `int`: a long that fits 32 bits.
    fn int(&mut self) -> Option<i32> {
        i32::try_from(self.long()?).ok()
    }

    fn boolean(&mut self) -> Option<bool> {
        match self.take(1)? {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }

    /// The blocks of an array or a map: a count (negative: its size in bytes follows),
    /// that many items, until a count of 0. Nothing is reserved from a declared count,
    /// so a forged one cannot ask for memory.
    fn blocks(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        loop {
            let count = match self.long()? {
                0 => return Some(()),
                n if n < 0 => {
                    self.long()?;
                    n.checked_neg()?
                }
                n => n,
            };
            for _ in 0..count {
                item(self)?;
            }
        }
    }

    fn double(&mut self) -> Option<f64> {
        Some(f64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn float(&mut self) -> Option<f32> {
        Some(f32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.long()?).ok()?;
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// A string that must read as a UUID in its usual 8-4-4-4-12 form, as the generic
    /// path requires for the `uuid` logical type.
    fn uuid_str(&mut self) -> Option<&'a str> {
        let s = self.string()?;
        let ok = s.len() == 36
            && s.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        ok.then_some(s)
    }

    fn uuid(&mut self) -> Option<String> {
        self.uuid_str().map(str::to_owned)
    }

    /// A `["null", T]` union.
    fn optional<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.long()? {
            0 => Some(None),
            1 => read(self).map(Some),
            _ => None,
        }
    }
}
