//! A hand-written decoder for the hottest event, `VehicleState` version 1.
//!
//! The generic path (apache-avro) builds a name table and a `Value` tree for every
//! record. When the writer schema is exactly the committed `VehicleState.avsc`, this
//! reads the binary layout straight into the struct instead; any other writer id goes
//! through the generic path, so schema evolution still works.

use std::collections::HashMap;
use std::sync::RwLock;

use apache_avro::Schema;
use eventbus_runtime::Origin;

use crate::codec::Decoder;
use crate::error::DecodeError;
use crate::events::{Position, VehicleState, VehicleStatus};
use crate::registry::SchemaRegistry;
use crate::wire;

const V1: &str = include_str!("../VehicleState.avsc");

/// Decodes `VehicleState` records, on the fast path when the writer is version 1.
pub struct VehicleStateDecoder<R> {
    generic: Decoder<R>,
    registry_v1: Schema,
    /// Per writer id: is it exactly version 1?
    layout: RwLock<HashMap<u32, bool>>,
}

impl<R: SchemaRegistry + Clone> VehicleStateDecoder<R> {
    /// A decoder over `registry`.
    ///
    /// # Panics
    /// Never: the committed schema is checked by the tests.
    pub fn new(registry: R) -> Self {
        #[allow(clippy::expect_used)]
        let registry_v1 = Schema::parse_str(V1).expect("the committed VehicleState.avsc parses");
        Self {
            generic: Decoder::new(registry),
            registry_v1,
            layout: RwLock::new(HashMap::new()),
        }
    }
}

impl<R: SchemaRegistry> VehicleStateDecoder<R> {
    fn is_v1(&self, id: u32, registry: &R) -> bool {
        if let Some(&known) = self
            .layout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return known;
        }
        // An id the registry cannot resolve goes the generic way, which reports why.
        let Ok(Some(schema)) = registry.schema(id) else {
            return false;
        };
        let v1 = *schema == self.registry_v1;
        self.layout
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, v1);
        v1
    }

    /// Decodes one record.
    ///
    /// # Errors
    /// The same [`DecodeError`]s as the generic path. Never panics on any input.
    pub fn decode(
        &self,
        bytes: &[u8],
        origin: Option<&Origin>,
    ) -> Result<VehicleState, DecodeError> {
        let (id, body) = wire::split(bytes, origin)?;
        if !self.is_v1(id, self.generic.registry()) {
            return self.generic.decode_typed(bytes, origin);
        }
        let mut c = Cursor { buf: body, pos: 0 };
        let event = read_v1(&mut c).ok_or_else(|| DecodeError::BadBody {
            origin: origin.cloned(),
            id,
            reason: format!("does not match VehicleState v1 at body byte {}", c.pos),
        })?;
        if c.pos != body.len() {
            return Err(DecodeError::TrailingBytes {
                origin: origin.cloned(),
                id,
                extra: body.len() - c.pos,
            });
        }
        Ok(event)
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
    let status = match c.long()? {
        0 => VehicleStatus::Driving,
        1 => VehicleStatus::Idle,
        2 => VehicleStatus::Charging,
        3 => VehicleStatus::Maintenance,
        4 => VehicleStatus::Offline,
        _ => return None,
    };
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
struct Cursor<'a> {
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
    fn uuid(&mut self) -> Option<String> {
        let s = self.string()?;
        let ok = s.len() == 36
            && s.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        ok.then(|| s.to_owned())
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
