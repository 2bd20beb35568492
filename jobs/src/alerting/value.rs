//! A decoded event as rules see it: Avro values turned into CEL values, and messages
//! rendered from them.
//!
//! - records and maps become CEL maps, arrays lists; a nullable field is its value or
//!   `null` (test it with `x != null`);
//! - enum symbols are strings (`status == 'DRIVING'`);
//! - `int` and `long` are CEL ints, timestamps included (milliseconds); `float` and
//!   `double` are doubles. A `float` is taken as the decimal it prints as, so
//!   `speed_kph > 120.3` is false for a speed written as 120.3.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use apache_avro::types::Value as Avro;
use cel::Value as Cel;
use cel::objects::{Key, Map};

use super::rules::{Piece, Template};

/// What a masked personal value reads as.
pub const MASK: &str = "***";

/// `value` as a CEL value.
pub fn to_cel(value: &Avro) -> Cel {
    match value {
        Avro::Null => Cel::Null,
        Avro::Boolean(b) => Cel::Bool(*b),
        Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => Cel::Int(i64::from(*i)),
        Avro::Long(i)
        | Avro::TimeMicros(i)
        | Avro::TimestampMillis(i)
        | Avro::TimestampMicros(i)
        | Avro::TimestampNanos(i)
        | Avro::LocalTimestampMillis(i)
        | Avro::LocalTimestampMicros(i)
        | Avro::LocalTimestampNanos(i) => Cel::Int(*i),
        Avro::Float(f) => Cel::Float(f.to_string().parse().unwrap_or(f64::from(*f))),
        Avro::Double(f) => Cel::Float(*f),
        Avro::String(s) | Avro::Enum(_, s) => Cel::String(Arc::new(s.clone())),
        Avro::Uuid(u) => Cel::String(Arc::new(u.to_string())),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Cel::Bytes(Arc::new(b.clone())),
        Avro::Union(_, inner) => to_cel(inner),
        Avro::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Avro::Map(entries) => map(entries.iter().map(|(k, v)| (k.as_str(), v))),
        Avro::Record(fields) => map(fields.iter().map(|(k, v)| (k.as_str(), v))),
        other => Cel::String(Arc::new(format!("{other:?}"))),
    }
}

fn map<'a>(entries: impl Iterator<Item = (&'a str, &'a Avro)>) -> Cel {
    let map: HashMap<Key, Cel> = entries
        .map(|(k, v)| (Key::String(Arc::new(k.to_owned())), to_cel(v)))
        .collect();
    Cel::Map(Map { map: Arc::new(map) })
}

/// The value at a dotted path of a record, through nullable unions.
pub fn field<'a, S: AsRef<str>>(value: &'a Avro, path: &[S]) -> Option<&'a Avro> {
    let mut at = value;
    for step in path {
        let step = step.as_ref();
        at = match unwrap(at) {
            Avro::Record(fields) => fields.iter().find(|(n, _)| n == step).map(|(_, v)| v)?,
            Avro::Map(entries) => entries.get(step)?,
            _ => return None,
        };
    }
    Some(unwrap(at))
}

fn unwrap(value: &Avro) -> &Avro {
    match value {
        Avro::Union(_, inner) => unwrap(inner),
        other => other,
    }
}

/// A value as text in a message or a key.
pub fn text(value: &Avro) -> String {
    match unwrap(value) {
        Avro::Null => "null".to_owned(),
        Avro::Boolean(b) => b.to_string(),
        Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => i.to_string(),
        Avro::Long(i) | Avro::TimestampMillis(i) | Avro::TimestampMicros(i) => i.to_string(),
        Avro::Float(f) => f.to_string(),
        Avro::Double(f) => f.to_string(),
        Avro::String(s) | Avro::Enum(_, s) => s.clone(),
        Avro::Uuid(u) => u.to_string(),
        other => format!("{other:?}"),
    }
}

/// A millisecond time a field holds, if it is one.
pub fn millis(value: &Avro) -> Option<i64> {
    match unwrap(value) {
        Avro::Long(i) | Avro::TimestampMillis(i) | Avro::LocalTimestampMillis(i) => Some(*i),
        Avro::TimestampMicros(i) => Some(i / 1_000),
        Avro::Int(i) => Some(i64::from(*i)),
        _ => None,
    }
}

/// `template` filled from `event`; the fields listed in `pii` read as [`MASK`].
pub fn render(template: &Template, event: &Avro, pii: &[String]) -> String {
    let mut out = String::new();
    for piece in &template.0 {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Field(path) => {
                if pii.iter().any(|p| *p == path.join(".") || *p == path[0]) {
                    out.push_str(MASK);
                } else if let Some(v) = field(event, path) {
                    let _ = write!(out, "{}", text(v));
                } else {
                    out.push_str("null");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event() -> Avro {
        Avro::Record(vec![
            ("vehicle_id".into(), Avro::String("veh-1".into())),
            ("speed_kph".into(), Avro::Float(120.3)),
            ("status".into(), Avro::Enum(0, "DRIVING".into())),
            (
                "position".into(),
                Avro::Record(vec![
                    ("lat".into(), Avro::Double(52.5)),
                    ("heading_deg".into(), Avro::Union(0, Box::new(Avro::Null))),
                ]),
            ),
            (
                "driver_id".into(),
                Avro::Union(1, Box::new(Avro::String("d-77".into()))),
            ),
        ])
    }

    #[test]
    fn messages_fill_fields_and_mask_personal_ones() {
        let t = Template::parse("{vehicle_id} at {speed_kph} km/h, {position.lat}, driver {driver_id}, {position.heading_deg}")
            .expect("parses");
        assert_eq!(
            render(&t, &event(), &["driver_id".to_owned()]),
            "veh-1 at 120.3 km/h, 52.5, driver ***, null"
        );
    }

    #[test]
    fn a_float_compares_as_the_decimal_it_prints_as() {
        let Cel::Map(m) = to_cel(&event()) else {
            panic!("a record is a map")
        };
        let speed = m.map.get(&Key::String(Arc::new("speed_kph".into())));
        assert_eq!(speed, Some(&Cel::Float(120.3)));
    }

    proptest! {
        /// Bytes from any producer (a wire-format header, then anything) decode to an
        /// error or to a value that converts, evaluates and renders without panicking.
        #[test]
        fn arbitrary_bytes_never_panic_the_rule_path(
            body in proptest::collection::vec(any::<u8>(), 0..120),
            id in 0u32..12,
            framed in any::<bool>(),
        ) {
            use eventbus_schemas::SchemaRegistry;
            let registry: std::sync::Arc<dyn SchemaRegistry> =
                std::sync::Arc::new(eventbus_schemas::FileRegistry::embedded().expect("registry"));
            let (_, reader) = registry.latest("vehicle.state.v1-value").expect("lookup").expect("subject");
            let decoder = eventbus_schemas::Decoder::with_reader(registry, reader);
            let mut bytes = if framed { vec![0u8] } else { Vec::new() };
            bytes.extend_from_slice(&id.to_be_bytes());
            bytes.extend_from_slice(&body);
            if let Ok((_, value)) = decoder.decode(&bytes, None) {
                let program = cel::Program::compile("speed_kph > 120.0 && status == 'DRIVING'").expect("cel");
                let mut ctx = cel::Context::default();
                if let Avro::Record(fields) = &value {
                    for (name, v) in fields {
                        ctx.add_variable_from_value(name.clone(), to_cel(v));
                    }
                }
                let _ = program.execute(&ctx);
                let t = Template::parse("{vehicle_id} {speed_kph} {position.lat}").expect("parses");
                let _ = render(&t, &value, &[]);
            }
        }

        /// Any template text renders without panicking, whatever the event holds.
        #[test]
        fn rendering_never_panics(text in ".{0,40}", lat in any::<f64>()) {
            if let Ok(t) = Template::parse(&text) {
                let mut e = event();
                if let Avro::Record(fields) = &mut e {
                    fields.push(("x".into(), Avro::Double(lat)));
                }
                let _ = render(&t, &e, &[]);
            }
        }
    }
}
