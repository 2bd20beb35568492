//! Event time from a field of a decoded Avro record, for jobs whose records are generic
//! [`Value`]s (`Decoder::decode` in `eventbus-schemas`) rather than typed events.

use std::sync::Arc;

use apache_avro::types::Value;
use eventbus_runtime::Record;
use eventbus_runtime::event_time::EventTime;

/// The event time in the field `path` of each record's value: a top-level field name,
/// or a dotted path into nested records (`position.fix_time`). The field may be a
/// `long` or `int` of milliseconds, a `timestamp-millis`, a `timestamp-micros` or
/// `timestamp-nanos` (truncated to milliseconds), or a union holding one of those. A
/// record without it (a null, a missing field, another type) has no event time, which
/// windowed operators count as late.
pub fn avro_field(path: &str) -> EventTime<Value> {
    let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
    EventTime::Extract(Arc::new(move |record: &Record<Value>| {
        let mut value = &record.value;
        for name in &parts {
            value = field(value, name)?;
        }
        millis(value)
    }))
}

fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    match value {
        Value::Record(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        Value::Union(_, inner) => field(inner, name),
        _ => None,
    }
}

fn millis(value: &Value) -> Option<i64> {
    match value {
        Value::Long(ms) | Value::TimestampMillis(ms) | Value::LocalTimestampMillis(ms) => Some(*ms),
        Value::Int(ms) => Some(i64::from(*ms)),
        Value::TimestampMicros(us) | Value::LocalTimestampMicros(us) => Some(us.div_euclid(1_000)),
        Value::TimestampNanos(ns) | Value::LocalTimestampNanos(ns) => {
            Some(ns.div_euclid(1_000_000))
        }
        Value::Union(_, inner) => millis(inner),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value: Value) -> Record<Value> {
        Record::new("t", 0, 0, value)
    }

    fn rec(fields: Vec<(&str, Value)>) -> Value {
        Value::Record(fields.into_iter().map(|(n, v)| (n.to_owned(), v)).collect())
    }

    #[test]
    fn the_named_field_in_any_time_type_gives_milliseconds() {
        let t = avro_field("event_time");
        for (v, want) in [
            (Value::TimestampMillis(1_700), Some(1_700)),
            (Value::Long(1_700), Some(1_700)),
            (Value::Int(17), Some(17)),
            (Value::TimestampMicros(1_700_999), Some(1_700)),
            (Value::TimestampNanos(1_700_999_999), Some(1_700)),
            (
                Value::Union(1, Box::new(Value::TimestampMillis(5))),
                Some(5),
            ),
            (Value::Union(0, Box::new(Value::Null)), None),
            (Value::String("1700".to_owned()), None),
        ] {
            let r = record(rec(vec![("id", Value::Int(1)), ("event_time", v.clone())]));
            assert_eq!(t.of(&r), want, "{v:?}");
        }
        assert_eq!(t.of(&record(rec(vec![("other", Value::Long(1))]))), None);
        assert_eq!(t.of(&record(Value::Long(1))), None, "not a record");
    }

    #[test]
    fn a_dotted_path_reaches_into_nested_and_nullable_records() {
        let t = avro_field("position.fix_time");
        let position = rec(vec![
            ("lat", Value::Double(1.0)),
            ("fix_time", Value::Long(42)),
        ]);
        let r = record(rec(vec![("position", Value::Union(1, Box::new(position)))]));
        assert_eq!(t.of(&r), Some(42));
        let r = record(rec(vec![(
            "position",
            Value::Union(0, Box::new(Value::Null)),
        )]));
        assert_eq!(t.of(&r), None);
    }
}
