//! Avro values as editable JSON, and back, guided by the writer schema.
//!
//! The JSON form is the one an operator edits in `eventbus dlq export` files: records are
//! objects, `["null", T]` unions are `null` or the plain value (other unions are
//! `{"<branch type>": value}` as in Avro's JSON encoding), enums are their symbol,
//! `uuid` is its text, timestamps and dates are numbers (ms or µs since the epoch, days),
//! decimals are strings (`"12.50"`), bytes and fixed are base64.
//! [`from_json`] checks every field against the schema and names the first one that does
//! not fit, by its path (`position.lat`).

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::types::Value;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value as Json};

type Names<'a> = HashMap<Name, &'a Schema>;

fn names(schema: &Schema) -> Result<Names<'_>, String> {
    let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
    Ok(resolved.get_names().clone())
}

fn deref<'a>(schema: &'a Schema, names: &Names<'a>) -> &'a Schema {
    match schema {
        Schema::Ref { name } => names.get(name).copied().unwrap_or(schema),
        other => other,
    }
}

/// The JSON form of a decoded value.
///
/// # Errors
/// The value does not belong to the schema.
pub fn to_json(value: &Value, schema: &Schema) -> Result<Json, String> {
    let names = names(schema)?;
    to(value, schema, &names, "")
}

fn to(value: &Value, schema: &Schema, names: &Names<'_>, path: &str) -> Result<Json, String> {
    let schema = deref(schema, names);
    Ok(match (value, schema) {
        (Value::Union(i, inner), Schema::Union(u)) => {
            let branch = u
                .variants()
                .get(*i as usize)
                .ok_or_else(|| format!("{path}: union branch {i} out of range"))?;
            let plain = to(inner, branch, names, path)?;
            let nullable = u.variants().len() == 2 && u.variants().contains(&Schema::Null);
            if nullable || matches!(**inner, Value::Null) {
                plain
            } else {
                let mut m = Map::new();
                m.insert(type_name(branch, names), plain);
                Json::Object(m)
            }
        }
        (Value::Record(fields), Schema::Record(r)) => {
            let mut m = Map::new();
            for ((name, v), f) in fields.iter().zip(&r.fields) {
                m.insert(name.clone(), to(v, &f.schema, names, &join(path, name))?);
            }
            Json::Object(m)
        }
        (Value::Array(items), Schema::Array(a)) => Json::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| to(v, &a.items, names, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        (Value::Map(entries), Schema::Map(m)) => {
            let mut out = Map::new();
            let mut keys: Vec<&String> = entries.keys().collect();
            keys.sort();
            for k in keys {
                out.insert(k.clone(), to(&entries[k], &m.types, names, &join(path, k))?);
            }
            Json::Object(out)
        }
        (Value::Decimal(d), Schema::Decimal(ds)) => {
            let bytes: Vec<u8> = d.try_into().map_err(|e| format!("{path}: {e}"))?;
            Json::String(decimal_text(&bytes, ds.scale))
        }
        (Value::Null, _) => Json::Null,
        (Value::Boolean(b), _) => Json::Bool(*b),
        (Value::Int(n) | Value::Date(n) | Value::TimeMillis(n), _) => Json::from(*n),
        (
            Value::Long(n)
            | Value::TimeMicros(n)
            | Value::TimestampMillis(n)
            | Value::TimestampMicros(n)
            | Value::TimestampNanos(n)
            | Value::LocalTimestampMillis(n)
            | Value::LocalTimestampMicros(n)
            | Value::LocalTimestampNanos(n),
            _,
        ) => Json::from(*n),
        (Value::Float(f), _) => number(f64::from(*f)),
        (Value::Double(f), _) => number(*f),
        (Value::String(s) | Value::Enum(_, s), _) => Json::String(s.clone()),
        (Value::Uuid(u), _) => Json::String(u.to_string()),
        (Value::Bytes(b) | Value::Fixed(_, b), _) => Json::String(B64.encode(b)),
        (other, _) => return Err(format!("{path}: {other:?} has no JSON form here")),
    })
}

fn number(f: f64) -> Json {
    serde_json::Number::from_f64(f).map_or_else(|| Json::String(f.to_string()), Json::Number)
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn type_name(schema: &Schema, names: &Names<'_>) -> String {
    match deref(schema, names) {
        Schema::Record(r) => r.name.fullname(None),
        Schema::Enum(e) => e.name.fullname(None),
        Schema::Fixed(f) => f.name.fullname(None),
        other => {
            let json = serde_json::to_value(other).unwrap_or(Json::Null);
            match json {
                Json::String(s) => s,
                Json::Object(m) => m
                    .get("type")
                    .and_then(Json::as_str)
                    .unwrap_or("unknown")
                    .to_owned(),
                _ => "unknown".to_owned(),
            }
        }
    }
}

/// Two's-complement big-endian `bytes` with `scale` digits after the point.
fn decimal_text(bytes: &[u8], scale: usize) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut n: i128 = if negative { -1 } else { 0 };
    for b in bytes {
        n = (n << 8) | i128::from(*b);
    }
    let digits = n.unsigned_abs().to_string();
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    let sign = if n < 0 { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// The value the JSON form describes, checked against the schema.
///
/// # Errors
/// The first field that does not fit, by path, with what was expected.
pub fn from_json(json: &Json, schema: &Schema) -> Result<Value, String> {
    let names = names(schema)?;
    from(json, schema, &names, "")
}

fn from(json: &Json, schema: &Schema, names: &Names<'_>, path: &str) -> Result<Value, String> {
    let here = if path.is_empty() { "the value" } else { path };
    let want = |what: &str| format!("{here}: expected {what}, found {json}");
    let schema = deref(schema, names);
    let int = |j: &Json| j.as_i64().ok_or_else(|| want("an integer"));
    Ok(match schema {
        Schema::Null => match json {
            Json::Null => Value::Null,
            _ => return Err(want("null")),
        },
        Schema::Boolean => Value::Boolean(json.as_bool().ok_or_else(|| want("true or false"))?),
        Schema::Int => Value::Int(i32::try_from(int(json)?).map_err(|_| want("a 32-bit integer"))?),
        Schema::Long => Value::Long(int(json)?),
        Schema::Float => Value::Float(json.as_f64().ok_or_else(|| want("a number"))? as f32),
        Schema::Double => Value::Double(json.as_f64().ok_or_else(|| want("a number"))?),
        Schema::String => Value::String(json.as_str().ok_or_else(|| want("a string"))?.to_owned()),
        Schema::Bytes => Value::Bytes(base64(json, &want)?),
        Schema::Uuid => {
            let s = json.as_str().ok_or_else(|| want("a UUID string"))?;
            Value::Uuid(s.parse().map_err(|_| want("a UUID string"))?)
        }
        Schema::Date => {
            Value::Date(i32::try_from(int(json)?).map_err(|_| want("days since 1970-01-01"))?)
        }
        Schema::TimeMillis => {
            Value::TimeMillis(i32::try_from(int(json)?).map_err(|_| want("ms of the day"))?)
        }
        Schema::TimeMicros => Value::TimeMicros(int(json)?),
        Schema::TimestampMillis => Value::TimestampMillis(int(json)?),
        Schema::TimestampMicros => Value::TimestampMicros(int(json)?),
        Schema::TimestampNanos => Value::TimestampNanos(int(json)?),
        Schema::LocalTimestampMillis => Value::LocalTimestampMillis(int(json)?),
        Schema::LocalTimestampMicros => Value::LocalTimestampMicros(int(json)?),
        Schema::LocalTimestampNanos => Value::LocalTimestampNanos(int(json)?),
        Schema::Fixed(f) => {
            let b = base64(json, &want)?;
            if b.len() != f.size {
                return Err(format!(
                    "{here}: expected {} bytes, found {}",
                    f.size,
                    b.len()
                ));
            }
            Value::Fixed(f.size, b)
        }
        Schema::Enum(e) => {
            let s = json.as_str().ok_or_else(|| want("an enum symbol"))?;
            let i =
                e.symbols.iter().position(|x| x == s).ok_or_else(|| {
                    format!("{here}: `{s}` is not one of {}", e.symbols.join(", "))
                })?;
            Value::Enum(u32::try_from(i).unwrap_or(0), s.to_owned())
        }
        Schema::Decimal(d) => {
            let s = match json {
                Json::String(s) => s.clone(),
                Json::Number(n) => n.to_string(),
                _ => return Err(want("a decimal like \"12.50\"")),
            };
            let bytes = decimal_bytes(&s, d.scale, d.precision).ok_or_else(|| {
                format!(
                    "{here}: `{s}` is not a decimal with at most {} digits after the point",
                    d.scale
                )
            })?;
            Value::Decimal(apache_avro::Decimal::from(bytes))
        }
        Schema::Array(a) => {
            let items = json.as_array().ok_or_else(|| want("an array"))?;
            Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| from(v, &a.items, names, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            )
        }
        Schema::Map(m) => {
            let obj = json.as_object().ok_or_else(|| want("an object"))?;
            Value::Map(
                obj.iter()
                    .map(|(k, v)| Ok((k.clone(), from(v, &m.types, names, &join(path, k))?)))
                    .collect::<Result<_, String>>()?,
            )
        }
        Schema::Record(r) => {
            let obj = json.as_object().ok_or_else(|| want("an object"))?;
            if let Some(extra) = obj.keys().find(|k| !r.fields.iter().any(|f| &f.name == *k)) {
                return Err(format!(
                    "{}: no such field in {}",
                    join(path, extra),
                    r.name.fullname(None)
                ));
            }
            let mut fields = Vec::with_capacity(r.fields.len());
            for f in &r.fields {
                let p = join(path, &f.name);
                let v = match obj.get(&f.name) {
                    Some(v) => from(v, &f.schema, names, &p)?,
                    None => match &f.default {
                        Some(d) => from(d, &f.schema, names, &p)?,
                        None => return Err(format!("{p}: missing (the field has no default)")),
                    },
                };
                fields.push((f.name.clone(), v));
            }
            Value::Record(fields)
        }
        Schema::Union(u) => {
            let variants = u.variants();
            if json.is_null() {
                let i = variants
                    .iter()
                    .position(|s| *s == Schema::Null)
                    .ok_or_else(|| want("a value (null is not allowed here)"))?;
                return Ok(Value::Union(
                    u32::try_from(i).unwrap_or(0),
                    Box::new(Value::Null),
                ));
            }
            // A tagged branch `{"type": value}` first, then the first branch that fits.
            if let Some(obj) = json.as_object()
                && obj.len() == 1
                && let Some((tag, inner)) = obj.iter().next()
                && let Some(i) = variants.iter().position(|s| type_name(s, names) == *tag)
            {
                let v = from(inner, &variants[i], names, path)?;
                return Ok(Value::Union(u32::try_from(i).unwrap_or(0), Box::new(v)));
            }
            let mut first_error = None;
            for (i, s) in variants.iter().enumerate() {
                if *s == Schema::Null {
                    continue;
                }
                match from(json, s, names, path) {
                    Ok(v) => return Ok(Value::Union(u32::try_from(i).unwrap_or(0), Box::new(v))),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            return Err(first_error.unwrap_or_else(|| want("a value of the union")));
        }
        other => {
            return Err(format!(
                "{here}: the schema type {other:?} is not supported"
            ));
        }
    })
}

fn base64(json: &Json, want: &dyn Fn(&str) -> String) -> Result<Vec<u8>, String> {
    let s = json.as_str().ok_or_else(|| want("base64 text"))?;
    B64.decode(s).map_err(|_| want("base64 text"))
}

/// `text` (`-12.5`) as the two's-complement big-endian bytes of its unscaled value, as
/// wide as `precision` digits need (apache-avro checks that width).
fn decimal_bytes(text: &str, scale: usize, precision: usize) -> Option<Vec<u8>> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if frac.len() > scale || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    if !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac:0<scale$}");
    let mut n: i128 = digits.parse().ok()?;
    if neg {
        n = -n;
    }
    let limit = 10i128.checked_pow(u32::try_from(precision).ok()?)?;
    if n.abs() >= limit {
        return None;
    }
    // The fewest bytes whose signed range holds every `precision`-digit number.
    let width = (1..=16usize)
        .find(|w| *w == 16 || (1i128 << (8 * w - 1)) > limit)
        .unwrap_or(16);
    Some(n.to_be_bytes()[16 - width..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_scale_and_sign() {
        for text in ["0.00", "12.50", "-12.50", "-0.01", "99999999.99"] {
            let b = decimal_bytes(text, 2, 10).unwrap();
            assert_eq!(b.len(), 5);
            assert_eq!(decimal_text(&b, 2), text);
        }
        assert!(decimal_bytes("1.234", 2, 10).is_none());
        assert!(decimal_bytes("1x", 2, 10).is_none());
        assert!(decimal_bytes("123456789.00", 2, 10).is_none());
    }
}
