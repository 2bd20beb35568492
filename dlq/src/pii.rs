//! Personal data: the catalog's PII fields (per topic, `[dlq] pii` in a job file), found
//! in a record's decoded value, never guessed from text.
//!
//! - [`redact_json`] replaces the PII fields of a decoded value (its JSON form, as
//!   `dlq inspect` and `dlq export` show it) with `"<redacted>"`, and returns the values
//!   it replaced.
//! - [`mask`] masks those values wherever they appear in a text (an error message, a
//!   header), as whole words.
//! - [`PiiRedactor`] does both for messages about a record: the runtime's
//!   [`Redact`] for the job-failure log, the retry warning and the letters' error
//!   headers. With the record's bytes at hand it decodes them; without, it reads the
//!   record back from Kafka by its origin (failures are rare, and each record is read
//!   once). A record it cannot read back gets its message withheld rather than shown.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use eventbus_runtime::redact::Redact;
use eventbus_runtime::{KafkaProperties, Origin};
use eventbus_schemas::SchemaRegistry;
use eventbus_schemas::codec::Decoder;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value as Json;

/// What a masked value reads as.
pub const REDACTED: &str = "<redacted>";

/// The text of every leaf under a PII field of an Avro value: strings, symbols, numbers,
/// uuids; the leaves of a record, array or map field.
fn leaves(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Null => {}
        Value::String(s) | Value::Enum(_, s) => out.push(s.clone()),
        Value::Uuid(u) => out.push(u.to_string()),
        Value::Union(_, inner) => leaves(inner, out),
        Value::Record(fields) => fields.iter().for_each(|(_, f)| leaves(f, out)),
        Value::Array(items) => items.iter().for_each(|i| leaves(i, out)),
        Value::Map(m) => m.values().for_each(|i| leaves(i, out)),
        Value::Bytes(b) | Value::Fixed(_, b) => {
            if let Ok(s) = std::str::from_utf8(b) {
                out.push(s.to_owned());
            }
        }
        Value::Boolean(_) => {}
        Value::Int(n) | Value::Date(n) | Value::TimeMillis(n) => out.push(n.to_string()),
        Value::Long(n) => out.push(n.to_string()),
        Value::Float(n) => out.push(n.to_string()),
        Value::Double(n) => out.push(n.to_string()),
        other => out.push(format!("{other:?}")),
    }
}

/// The values of `fields` (dotted paths: `driver.id`) in a decoded Avro value.
pub fn values_in(value: &Value, fields: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for path in fields {
        let mut at = value;
        let mut found = true;
        for step in path.split('.') {
            while let Value::Union(_, inner) = at {
                at = inner;
            }
            match at {
                Value::Record(fs) => match fs.iter().find(|(n, _)| n == step) {
                    Some((_, v)) => at = v,
                    None => {
                        found = false;
                        break;
                    }
                },
                _ => {
                    found = false;
                    break;
                }
            }
        }
        if found {
            leaves(at, &mut out);
        }
    }
    out
}

/// Replaces `fields` (dotted paths) of a decoded value's JSON form with
/// [`REDACTED`], and returns the values replaced, as text.
pub fn redact_json(value: &mut Json, fields: &[String]) -> Vec<String> {
    fn texts(v: &Json, out: &mut Vec<String>) {
        match v {
            Json::Null | Json::Bool(_) => {}
            Json::String(s) => out.push(s.clone()),
            Json::Number(n) => out.push(n.to_string()),
            Json::Array(a) => a.iter().for_each(|i| texts(i, out)),
            Json::Object(o) => o.values().for_each(|i| texts(i, out)),
        }
    }
    fn at(v: &mut Json, steps: &[&str], out: &mut Vec<String>) {
        let Some((first, rest)) = steps.split_first() else {
            if !v.is_null() {
                texts(v, out);
                *v = Json::String(REDACTED.to_owned());
            }
            return;
        };
        let Json::Object(o) = v else { return };
        if let Some(next) = o.get_mut(*first) {
            at(next, rest, out);
        } else if o.len() == 1
            && let Some(branch) = o.values_mut().next()
        {
            // A union other than ["null", T] is {"<branch>": value}: look through it.
            at(branch, steps, out);
        }
    }
    let mut out = Vec::new();
    for path in fields {
        let steps: Vec<&str> = path.split('.').collect();
        at(value, &steps, &mut out);
    }
    out
}

/// `text` with every whole-word occurrence of `values` replaced by [`REDACTED`]. A
/// value counts as a whole word when the characters around it are not letters or
/// digits (or the value itself begins or ends with one that is not).
pub fn mask(text: &str, values: &[String]) -> String {
    let mut values: Vec<&str> = values
        .iter()
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .collect();
    // Longer first, so a value that contains another is masked whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    let mut out = text.to_owned();
    for v in values {
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(i) = rest.find(v) {
            let before = rest[..i].chars().next_back();
            let after = rest[i + v.len()..].chars().next();
            let starts_word = v.chars().next().is_some_and(char::is_alphanumeric);
            let ends_word = v.chars().next_back().is_some_and(char::is_alphanumeric);
            let glued = (starts_word && before.is_some_and(char::is_alphanumeric))
                || (ends_word && after.is_some_and(char::is_alphanumeric));
            let bounded = !glued;
            result.push_str(&rest[..i]);
            result.push_str(if bounded { REDACTED } else { v });
            rest = &rest[i + v.len()..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// Records read back recently, and their PII values.
const CACHED: usize = 256;

/// The [`Redact`] of the eventbus jobs; see the module docs.
pub struct PiiRedactor {
    pii: HashMap<String, Vec<String>>,
    decoder: Decoder<Arc<dyn SchemaRegistry>>,
    kafka: Option<KafkaProperties>,
    reader: Mutex<Option<BaseConsumer>>,
    cache: Mutex<VecDeque<(Origin, Option<Vec<String>>)>>,
}

impl std::fmt::Debug for PiiRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiiRedactor")
            .field("pii", &self.pii)
            .finish_non_exhaustive()
    }
}

impl PiiRedactor {
    /// A redactor for `pii` (fields per topic) decoding through `registry`; with
    /// `kafka`, it reads a record back by its origin when the caller does not hold it.
    pub fn new(
        pii: HashMap<String, Vec<String>>,
        registry: Arc<dyn SchemaRegistry>,
        kafka: Option<KafkaProperties>,
    ) -> Self {
        Self {
            pii,
            decoder: Decoder::new(registry),
            kafka,
            reader: Mutex::new(None),
            cache: Mutex::new(VecDeque::new()),
        }
    }

    /// The PII fields of `topic`.
    pub fn fields(&self, topic: &str) -> &[String] {
        self.pii.get(topic).map_or(&[], Vec::as_slice)
    }

    /// The PII values of a wire-format value of `topic`. A value that does not decode
    /// has no fields to find: nothing.
    pub fn values_of(&self, topic: &str, bytes: &[u8]) -> Vec<String> {
        match self.decoder.decode(bytes, None) {
            Ok((_, v)) => values_in(&v, self.fields(topic)),
            Err(_) => Vec::new(),
        }
    }

    /// Reads the record at `origin` back, within a few seconds.
    fn read_back(&self, origin: &Origin) -> Option<Vec<u8>> {
        let kafka = self.kafka.as_ref()?;
        let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if reader.is_none() {
            let mut cfg = ClientConfig::new();
            for (k, v) in kafka.iter() {
                cfg.set(k, v);
            }
            cfg.set("enable.auto.commit", "false");
            cfg.set("group.id", "eventbus-pii-reader");
            *reader = cfg.create().ok();
        }
        let consumer = reader.as_ref()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &origin.topic,
            origin.partition,
            Offset::Offset(origin.offset),
        )
        .ok()?;
        consumer.assign(&tpl).ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = None;
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.partition() == origin.partition && m.offset() == origin.offset => {
                    found = Some(m.payload().unwrap_or_default().to_vec());
                    break;
                }
                Some(Ok(m)) if m.offset() > origin.offset => break,
                _ => {}
            }
        }
        let _ = consumer.unassign();
        found
    }

    /// The PII values of the record at `origin`, read back (once per record).
    fn values_at(&self, origin: &Origin) -> Option<Vec<String>> {
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, v)) = cache.iter().find(|(o, _)| o == origin) {
                return v.clone();
            }
        }
        let values = self
            .read_back(origin)
            .map(|bytes| self.values_of(&origin.topic, &bytes));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHED {
            cache.pop_front();
        }
        cache.push_back((origin.clone(), values.clone()));
        values
    }
}

impl Redact for PiiRedactor {
    fn redact(&self, origin: &Origin, value: Option<&[u8]>, text: &str) -> String {
        if self.fields(&origin.topic).is_empty() {
            return text.to_owned();
        }
        let values = match value {
            Some(bytes) => Some(self.values_of(&origin.topic, bytes)),
            None => self.values_at(origin),
        };
        match values {
            Some(values) => mask(text, &values),
            None => format!(
                "<message withheld: {} has personal data fields and the record could not be \
                 read back to mask them>",
                origin.topic
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_masked_as_whole_words() {
        let values = vec!["d-7".to_owned(), "Ann Lee".to_owned(), "42".to_owned()];
        assert_eq!(
            mask(
                "driver d-7 (Ann Lee) unknown; d-77 and 1420 stay; id=42.",
                &values
            ),
            "driver <redacted> (<redacted>) unknown; d-77 and 1420 stay; id=<redacted>."
        );
        assert_eq!(mask("nothing here", &[String::new()]), "nothing here");
    }

    #[test]
    fn fields_are_found_in_the_decoded_value_nested_and_in_unions() {
        let v = Value::Record(vec![
            (
                "driver_id".into(),
                Value::Union(1, Box::new(Value::String("d-7".into()))),
            ),
            (
                "contact".into(),
                Value::Record(vec![("phone".into(), Value::String("+49 30 1".into()))]),
            ),
            ("speed".into(), Value::Float(3.0)),
        ]);
        let fields = vec![
            "driver_id".to_owned(),
            "contact.phone".to_owned(),
            "missing".to_owned(),
        ];
        assert_eq!(values_in(&v, &fields), vec!["d-7", "+49 30 1"]);
    }

    #[test]
    fn json_fields_are_replaced_and_their_values_returned() {
        let mut j = serde_json::json!({
            "driver_id": "d-7", "speed": 3.0, "contact": {"phone": "+49"}, "none": null
        });
        let fields = vec![
            "driver_id".to_owned(),
            "contact.phone".to_owned(),
            "none".to_owned(),
        ];
        assert_eq!(redact_json(&mut j, &fields), vec!["d-7", "+49"]);
        assert_eq!(
            j,
            serde_json::json!({
                "driver_id": REDACTED, "speed": 3.0, "contact": {"phone": REDACTED}, "none": null
            })
        );
    }
}
