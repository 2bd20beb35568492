//! The fix path: letters out as editable JSON lines, and back in as records.
//!
//! One line per letter:
//!
//! ```json
//! {"dlq":{"topic":"vehicle.state.v1.dlq","partition":0,"offset":17},
//!  "topic":"vehicle.state.v1","partition":3,"offset":4242,"category":"validation",
//!  "error":"battery_pct 180 is outside 0..=100","key":"veh-0007","timestamp":1767225600123,
//!  "headers":[{"key":"trace","value":"abc"}],"replay_count":0,
//!  "schema_id":1,"value":{"event_id":"…","battery_pct":180.0,…}}
//! ```
//!
//! Exported by default with the topic's PII fields replaced by `"<redacted>"` (and their
//! values masked in `error`, `key` and the headers), listed under `"redacted"`; import
//! refuses such a line. `--show-pii` exports the values as they are.
//!
//! `value` is the decoded record when its schema is known; otherwise the line has
//! `value_base64` (the raw bytes) and `value_error` (why it did not decode). Keys, header
//! keys and header values that are not UTF-8 are written as `key_base64` / `value_base64`.
//! Import checks every line first: a JSON `value` must fit the writer schema named by
//! `schema_id`, and a raw value must decode. If any line is invalid nothing is produced.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use eventbus_runtime::{Headers, KafkaProperties};
use eventbus_schemas::codec::Decoder;
use eventbus_schemas::json::{from_json, to_json};
use eventbus_schemas::{SchemaRegistry, encode_value};
use serde_json::{Value as Json, json};

use crate::DlqError;
use crate::envelope::{REPLAY_COUNT, REPLAY_ID, is_context_header};
use crate::store::StoredLetter;

/// The writer schema `id` names, or why there is none.
fn schema_of<R: SchemaRegistry>(
    registry: &R,
    id: u32,
) -> Result<std::sync::Arc<apache_avro::Schema>, String> {
    match registry.schema(id) {
        Ok(Some(schema)) => Ok(schema),
        Ok(None) => Err(format!("schema id {id} is not registered")),
        Err(e) => Err(format!("schema id {id}: {e}")),
    }
}

/// The JSON line of one letter. With `pii` (the letter's topic's PII fields), those
/// fields of the value are replaced with `"<redacted>"`, their values are masked in the
/// error and the headers, and the line says so under `"redacted"`: import refuses such a
/// line, which no longer holds the record.
pub fn export_line<R: SchemaRegistry>(
    l: &StoredLetter,
    decoder: &Decoder<R>,
    pii: Option<&[String]>,
) -> Json {
    let registry = decoder.registry();
    let c = &l.context;
    let headers: Vec<Json> = l
        .headers
        .iter()
        .filter(|h| !is_context_header(&h.key))
        .map(|h| {
            let mut out = serde_json::Map::new();
            match h.key_str() {
                Some(key) => out.insert("key".into(), json!(key)),
                None => out.insert("key_base64".into(), json!(B64.encode(&h.key))),
            };
            match h.value.as_deref() {
                None => out.insert("value".into(), Json::Null),
                Some(v) => match std::str::from_utf8(v) {
                    Ok(text) => out.insert("value".into(), json!(text)),
                    Err(_) => out.insert("value_base64".into(), json!(B64.encode(v))),
                },
            };
            Json::Object(out)
        })
        .collect();
    let mut line = json!({
        "dlq": {"topic": l.dlq_topic, "partition": l.dlq_partition, "offset": l.dlq_offset},
        "topic": c.topic,
        "partition": c.partition,
        "offset": c.offset,
        "category": l.category,
        "class": c.class,
        "error": c.message,
        "timestamp": l.timestamp,
        "headers": headers,
        "replay_count": c.replay_count,
    });
    match l.key.as_deref().map(std::str::from_utf8) {
        None => line["key"] = Json::Null,
        Some(Ok(k)) => line["key"] = json!(k),
        Some(Err(_)) => {
            line["key_base64"] = json!(B64.encode(l.key.as_deref().unwrap_or_default()))
        }
    }
    let decoded = decoder
        .decode(&l.value, None)
        .map_err(|e| e.to_string())
        .and_then(|(id, v)| {
            let schema = schema_of(registry, id)?;
            Ok((id, to_json(&v, &schema)?))
        });
    match decoded {
        Ok((id, mut value)) => {
            line["schema_id"] = json!(id);
            if let Some(fields) = pii.filter(|f| !f.is_empty()) {
                let values = crate::pii::redact_json(&mut value, fields);
                mask_line(&mut line, &values);
                line["redacted"] = json!(fields);
            }
            line["value"] = value;
        }
        Err(e) => {
            if l.value.len() >= 5 && l.value[0] == 0 {
                let id = u32::from_be_bytes([l.value[1], l.value[2], l.value[3], l.value[4]]);
                line["schema_id"] = json!(id);
            }
            line["value_base64"] = json!(B64.encode(&l.value));
            line["value_error"] = json!(e);
        }
    }
    line
}

/// Masks `values` in a line's error, key and header values.
fn mask_line(line: &mut Json, values: &[String]) {
    if values.is_empty() {
        return;
    }
    for field in ["error", "key"] {
        if let Some(text) = line[field].as_str() {
            line[field] = json!(crate::pii::mask(text, values));
        }
    }
    if let Some(headers) = line["headers"].as_array_mut() {
        for h in headers {
            if let Some(text) = h["value"].as_str() {
                h["value"] = json!(crate::pii::mask(text, values));
            }
        }
    }
}

/// A checked import line, ready to produce.
#[derive(Debug, Clone)]
pub struct ImportRecord {
    /// Line number in the file (from 1).
    pub line: usize,
    /// Target topic.
    pub topic: String,
    /// Key.
    pub key: Option<Bytes>,
    /// Wire-format value.
    pub value: Bytes,
    /// Headers: the line's, with `eventbus.replay.id` and `eventbus.replay.count` set.
    pub headers: Headers,
}

/// Checks every line. Returns the records, or every invalid line with its reason.
pub fn check_import<R: SchemaRegistry>(
    text: &str,
    decoder: &Decoder<R>,
    to: Option<&str>,
    import_id: &str,
) -> Result<Vec<ImportRecord>, Vec<(usize, String)>> {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        match check_line(raw, decoder, to, import_id) {
            Ok(mut r) => {
                r.line = n;
                ok.push(r);
            }
            Err(e) => bad.push((n, e)),
        }
    }
    if bad.is_empty() { Ok(ok) } else { Err(bad) }
}

fn check_line<R: SchemaRegistry>(
    raw: &str,
    decoder: &Decoder<R>,
    to: Option<&str>,
    import_id: &str,
) -> Result<ImportRecord, String> {
    let registry = decoder.registry();
    let line: Json = serde_json::from_str(raw).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(fields) = line["redacted"].as_array().filter(|f| !f.is_empty()) {
        return Err(format!(
            "the value was exported with its personal data redacted ({}); export it again \
             with --show-pii to fix and import it",
            fields
                .iter()
                .filter_map(Json::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let topic = match (to, line["topic"].as_str()) {
        (Some(t), _) => t.to_owned(),
        (None, Some(t)) => t.to_owned(),
        (None, None) => return Err("no \"topic\" (and no --to)".to_owned()),
    };
    let key = match (&line["key"], line.get("key_base64")) {
        (_, Some(b)) => Some(Bytes::from(
            B64.decode(b.as_str().unwrap_or_default())
                .map_err(|_| "key_base64 is not base64".to_owned())?,
        )),
        (Json::String(k), None) => Some(Bytes::copy_from_slice(k.as_bytes())),
        (Json::Null, None) => None,
        (other, None) => return Err(format!("key must be a string or null, found {other}")),
    };
    let value = if let Some(v) = line.get("value").filter(|v| !v.is_null()) {
        let id = line["schema_id"]
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or("a JSON value needs its \"schema_id\"")?;
        let schema = schema_of(registry, id)?;
        let avro = from_json(v, &schema).map_err(|e| format!("value: {e}"))?;
        encode_value(id, &schema, avro).map_err(|e| format!("value: {e}"))?
    } else if let Some(b) = line["value_base64"].as_str() {
        let bytes = B64
            .decode(b)
            .map_err(|_| "value_base64 is not base64".to_owned())?;
        decoder
            .decode(&bytes, None)
            .map_err(|e| format!("the raw value still does not decode: {e}"))?;
        bytes
    } else {
        return Err("no \"value\" or \"value_base64\"".to_owned());
    };
    let mut headers = Headers::new();
    if let Some(list) = line["headers"].as_array() {
        for h in list {
            let k: Bytes = match (h.get("key"), h.get("key_base64")) {
                (_, Some(b)) => Bytes::from(
                    B64.decode(b.as_str().unwrap_or_default())
                        .map_err(|_| "a header's key_base64 is not base64".to_owned())?,
                ),
                (Some(Json::String(s)), None) => Bytes::copy_from_slice(s.as_bytes()),
                _ => return Err("a header without \"key\" or \"key_base64\"".to_owned()),
            };
            if is_context_header(&k) || k == REPLAY_ID || k == REPLAY_COUNT {
                continue;
            }
            let k_text = String::from_utf8_lossy(&k).into_owned();
            let v = match (h.get("value"), h.get("value_base64")) {
                (_, Some(b)) => Some(Bytes::from(
                    B64.decode(b.as_str().unwrap_or_default())
                        .map_err(|_| format!("header {k_text}: value_base64 is not base64"))?,
                )),
                (Some(Json::String(s)), None) => Some(Bytes::copy_from_slice(s.as_bytes())),
                _ => None,
            };
            headers.push_raw(k, v);
        }
    }
    let count = line["replay_count"].as_u64().unwrap_or(0) + 1;
    headers.push(
        REPLAY_ID,
        Some(Bytes::copy_from_slice(import_id.as_bytes())),
    );
    headers.push(REPLAY_COUNT, Some(Bytes::from(count.to_string())));
    Ok(ImportRecord {
        line: 0,
        topic,
        key,
        value: Bytes::from(value),
        headers,
    })
}

/// Produces checked records (idempotent producer, `acks=all`) and waits for every
/// acknowledgement. Returns how many went to each topic.
///
/// # Errors
/// A record cannot be sent or the broker refused one (named by topic and partition).
pub fn produce(
    props: &KafkaProperties,
    records: &[ImportRecord],
    mut progress: impl FnMut(u64),
) -> Result<BTreeMap<String, u64>, DlqError> {
    use rdkafka::producer::{BaseRecord, Producer};
    let producer = crate::replay::producer(props)?;
    let mut by_topic = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let headers = r.headers.to_kafka();
        let mut rec = BaseRecord::to(&r.topic)
            .payload(&r.value[..])
            .headers(headers);
        if let Some(k) = r.key.as_deref() {
            rec = rec.key(k);
        }
        eventbus_runtime::kafka::send_waiting(&producer, rec).map_err(|(e, _)| {
            DlqError::kafka(format!("line {}: sending to {}", r.line, r.topic), e)
        })?;
        *by_topic.entry(r.topic.clone()).or_default() += 1;
        progress(i as u64 + 1);
    }
    producer
        .flush(std::time::Duration::from_secs(60))
        .map_err(|e| {
            DlqError::kafka(
                "waiting for the broker to acknowledge the imported records",
                e,
            )
        })?;
    if let Some(e) = producer.context().first_error() {
        return Err(DlqError::Refused {
            what: "an imported record".into(),
            reason: e,
        });
    }
    Ok(by_topic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventbus_schemas::FileRegistry;
    use eventbus_schemas::fleet::FleetGenerator;

    use crate::LetterContext;

    #[test]
    fn header_keys_that_are_not_utf8_survive_export_and_import() {
        let registry = FileRegistry::embedded().expect("registry");
        let (id, schema) = registry
            .latest_of("vehicle.state.v1-value")
            .expect("registered");
        let event = FleetGenerator::new(1, 7).next().expect("an event");
        let value = eventbus_schemas::encode(id, &schema, &event).expect("encode");
        let mut headers = Headers::new();
        headers.push(b"\xff\xfetrace", Some(Bytes::from_static(b"\x80bin")));
        headers.push("plain", Some(Bytes::from_static(b"text")));
        let letter = StoredLetter {
            dlq_topic: "vehicle.state.v1.dlq".into(),
            dlq_partition: 0,
            dlq_offset: 3,
            key: Some(Bytes::from_static(b"veh-1")),
            value: Bytes::from(value),
            headers: headers.clone(),
            timestamp: Some(1),
            context: LetterContext {
                topic: Some("vehicle.state.v1".into()),
                ..LetterContext::default()
            },
            category: "validation".into(),
        };
        let decoder = Decoder::new(registry);
        let line = export_line(&letter, &decoder, None);
        assert_eq!(
            line["headers"][0]["key_base64"],
            json!(B64.encode(b"\xff\xfetrace"))
        );
        assert_eq!(
            line["headers"][0]["value_base64"],
            json!(B64.encode(b"\x80bin"))
        );
        assert_eq!(line["headers"][1], json!({"key": "plain", "value": "text"}));
        let records = check_import(&line.to_string(), &decoder, None, "import-1")
            .expect("the exported line imports");
        let back: Vec<(&[u8], Option<&[u8]>)> = records[0]
            .headers
            .iter()
            .map(|h| (&h.key[..], h.value.as_deref()))
            .take(2)
            .collect();
        let sent: Vec<(&[u8], Option<&[u8]>)> = headers
            .iter()
            .map(|h| (&h.key[..], h.value.as_deref()))
            .collect();
        assert_eq!(back, sent);
    }
}
