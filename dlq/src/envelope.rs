//! The dead-letter envelope: the original record's key, value, headers and timestamp,
//! plus context headers in three conventions, so Spring Kafka tooling, Kafka Connect
//! tooling and eventbus can all read and redrive a letter.
//!
//! | header | encoding |
//! |---|---|
//! | `kafka_dlt-original-topic`, `-exception-fqcn`, `-exception-message`, `-original-consumer-group`, `-original-timestamp-type` | UTF-8 |
//! | `kafka_dlt-original-partition` | 4-byte big-endian int (as Spring Kafka writes it) |
//! | `kafka_dlt-original-offset`, `kafka_dlt-original-timestamp` | 8-byte big-endian long |
//! | `__connect.errors.topic`, `.partition`, `.offset`, `.exception.class.name`, `.exception.message` | UTF-8 (numbers in decimal, as Kafka Connect writes them) |
//! | `eventbus.error.class`, `.error.stage`, `.attempts`, `.first_failure_ts`, `.job`, `.replay.count`, `.replay.id` | UTF-8 (numbers in decimal, time in ms since the epoch) |
//!
//! Context headers of an earlier failure (a replayed record that failed again) are
//! replaced, not repeated; `eventbus.replay.*` travel with the record and are kept.

use bytes::Bytes;
use eventbus_runtime::{DeadLetter, Headers, Record};

/// Spring Kafka's original-topic header.
pub const DLT_TOPIC: &str = "kafka_dlt-original-topic";
/// Spring Kafka's original-partition header (4-byte big-endian).
pub const DLT_PARTITION: &str = "kafka_dlt-original-partition";
/// Spring Kafka's original-offset header (8-byte big-endian).
pub const DLT_OFFSET: &str = "kafka_dlt-original-offset";
/// Spring Kafka's original-timestamp header (8-byte big-endian, ms).
pub const DLT_TIMESTAMP: &str = "kafka_dlt-original-timestamp";
/// Spring Kafka's original-timestamp-type header.
pub const DLT_TIMESTAMP_TYPE: &str = "kafka_dlt-original-timestamp-type";
/// Spring Kafka's original-consumer-group header.
pub const DLT_GROUP: &str = "kafka_dlt-original-consumer-group";
/// Spring Kafka's exception class header.
pub const DLT_EXCEPTION: &str = "kafka_dlt-exception-fqcn";
/// Spring Kafka's exception message header.
pub const DLT_MESSAGE: &str = "kafka_dlt-exception-message";
/// Kafka Connect's original-topic header.
pub const CONNECT_TOPIC: &str = "__connect.errors.topic";
/// Kafka Connect's original-partition header.
pub const CONNECT_PARTITION: &str = "__connect.errors.partition";
/// Kafka Connect's original-offset header.
pub const CONNECT_OFFSET: &str = "__connect.errors.offset";
/// Kafka Connect's exception class header.
pub const CONNECT_EXCEPTION: &str = "__connect.errors.exception.class.name";
/// Kafka Connect's exception message header.
pub const CONNECT_MESSAGE: &str = "__connect.errors.exception.message";
/// The error class: transient or permanent.
pub const CLASS: &str = "eventbus.error.class";
/// Where the record failed: `operator` or `sink:<name>`.
pub const STAGE: &str = "eventbus.error.stage";
/// How many times the record was tried.
pub const ATTEMPTS: &str = "eventbus.attempts";
/// When the record first failed (ms since the epoch).
pub const FIRST_FAILURE: &str = "eventbus.first_failure_ts";
/// The job that failed the record.
pub const JOB: &str = "eventbus.job";
/// How many times the record was replayed from a DLQ.
pub const REPLAY_COUNT: &str = "eventbus.replay.count";
/// The id of the last replay that produced the record.
pub const REPLAY_ID: &str = "eventbus.replay.id";

/// Headers this module writes for a failure; an earlier failure's copies are dropped.
const CONTEXT: &[&str] = &[
    DLT_TOPIC,
    DLT_PARTITION,
    DLT_OFFSET,
    DLT_TIMESTAMP,
    DLT_TIMESTAMP_TYPE,
    DLT_GROUP,
    DLT_EXCEPTION,
    DLT_MESSAGE,
    CONNECT_TOPIC,
    CONNECT_PARTITION,
    CONNECT_OFFSET,
    CONNECT_EXCEPTION,
    CONNECT_MESSAGE,
    CLASS,
    STAGE,
    ATTEMPTS,
    FIRST_FAILURE,
    JOB,
];

/// Whether a header is failure context this module writes (and replays remove).
pub fn is_context_header(key: &[u8]) -> bool {
    CONTEXT.iter().any(|c| c.as_bytes() == key)
}

/// The error message in a letter's headers is cut at this many bytes.
pub const MESSAGE_CAP: usize = 16 * 1024;

/// Header of a letter written without its value, which was too big for the DLQ topic:
/// the value's size in bytes. The record is still at its coordinates in the source topic.
pub const VALUE_OMITTED: &str = "eventbus.value.omitted";

/// `text` cut to at most `cap` bytes at a character boundary, saying how much was cut.
fn capped(text: &str, cap: usize) -> String {
    if text.len() <= cap {
        return text.to_owned();
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes cut)", &text[..end], text.len() - end)
}

/// The letter for `letter`: original key, value and timestamp, original headers (less
/// any earlier failure context) followed by the context headers. `message` is the error
/// message as it may be shown (already redacted), cut at [`MESSAGE_CAP`] bytes.
pub fn letter_record(letter: &DeadLetter, group: Option<&str>, message: &str) -> Record<Bytes> {
    let r = &letter.record;
    // Not the replay's group either: the letter is read by the DLQ processor's group, and
    // the group that failed it is named in its own header.
    let mut headers: Headers = r
        .headers
        .iter()
        .filter(|h| !is_context_header(&h.key) && h.key != eventbus_runtime::REPLAY_GROUP)
        .cloned()
        .collect();
    let text =
        |h: &mut Headers, k: &str, v: &str| h.push(k, Some(Bytes::copy_from_slice(v.as_bytes())));
    text(&mut headers, DLT_TOPIC, &r.topic);
    headers.push(
        DLT_PARTITION,
        Some(Bytes::copy_from_slice(&r.partition.to_be_bytes())),
    );
    headers.push(
        DLT_OFFSET,
        Some(Bytes::copy_from_slice(&r.offset.to_be_bytes())),
    );
    if let Some(ts) = r.timestamp {
        headers.push(
            DLT_TIMESTAMP,
            Some(Bytes::copy_from_slice(&ts.to_be_bytes())),
        );
        text(&mut headers, DLT_TIMESTAMP_TYPE, "CreateTime");
    }
    if let Some(group) = group {
        text(&mut headers, DLT_GROUP, group);
    }
    // Bounded, so a letter is never much bigger than its record.
    let message = &capped(message, MESSAGE_CAP);
    text(&mut headers, DLT_EXCEPTION, &letter.error_type);
    text(&mut headers, DLT_MESSAGE, message);
    text(&mut headers, CONNECT_TOPIC, &r.topic);
    text(&mut headers, CONNECT_PARTITION, &r.partition.to_string());
    text(&mut headers, CONNECT_OFFSET, &r.offset.to_string());
    text(&mut headers, CONNECT_EXCEPTION, &letter.error_type);
    text(&mut headers, CONNECT_MESSAGE, message);
    text(&mut headers, CLASS, &letter.class.to_string());
    text(&mut headers, STAGE, &letter.stage);
    text(&mut headers, ATTEMPTS, &letter.attempts.to_string());
    text(
        &mut headers,
        FIRST_FAILURE,
        &letter.first_failure_ms.to_string(),
    );
    text(&mut headers, JOB, &letter.job);
    Record {
        topic: r.topic.clone(),
        partition: r.partition,
        offset: r.offset,
        key: r.key.clone(),
        headers,
        timestamp: r.timestamp,
        value: r.value.clone(),
    }
}

/// What a letter's headers say about its failure. Fields a letter lacks are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LetterContext {
    /// The topic the record was read from.
    pub topic: Option<String>,
    /// Its partition there.
    pub partition: Option<i32>,
    /// Its offset there.
    pub offset: Option<i64>,
    /// Its Kafka timestamp (ms).
    pub timestamp: Option<i64>,
    /// `transient` or `permanent`.
    pub class: Option<String>,
    /// `operator` or `sink:<name>`.
    pub stage: Option<String>,
    /// The error's type name.
    pub exception: Option<String>,
    /// The error message.
    pub message: Option<String>,
    /// Tries before it was dead-lettered.
    pub attempts: Option<u32>,
    /// First failure (ms since the epoch).
    pub first_failure_ms: Option<i64>,
    /// The job that failed it.
    pub job: Option<String>,
    /// Replays so far (0 when never replayed).
    pub replay_count: u32,
    /// The last replay's id.
    pub replay_id: Option<String>,
    /// The consumer group whose job failed the record.
    pub group: Option<String>,
}

impl LetterContext {
    /// Reads the context headers. Reads the eventbus and Spring headers first and falls
    /// back to Kafka Connect's, so letters written by other tools are understood too.
    pub fn from_headers(headers: &Headers) -> Self {
        let text = |k: &str| {
            headers
                .get(k)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
        };
        let num = |k: &str| text(k).and_then(|s| s.trim().parse::<i64>().ok());
        let be = |k: &str| {
            headers.get(k).and_then(|v| match v.len() {
                4 => v.try_into().ok().map(|b| i64::from(i32::from_be_bytes(b))),
                8 => v.try_into().ok().map(i64::from_be_bytes),
                _ => None,
            })
        };
        Self {
            topic: text(DLT_TOPIC).or_else(|| text(CONNECT_TOPIC)),
            partition: be(DLT_PARTITION)
                .or_else(|| num(CONNECT_PARTITION))
                .and_then(|p| i32::try_from(p).ok()),
            offset: be(DLT_OFFSET).or_else(|| num(CONNECT_OFFSET)),
            timestamp: be(DLT_TIMESTAMP),
            class: text(CLASS),
            stage: text(STAGE),
            exception: text(DLT_EXCEPTION).or_else(|| text(CONNECT_EXCEPTION)),
            message: text(DLT_MESSAGE).or_else(|| text(CONNECT_MESSAGE)),
            attempts: num(ATTEMPTS).and_then(|a| u32::try_from(a).ok()),
            first_failure_ms: num(FIRST_FAILURE),
            job: text(JOB),
            replay_count: num(REPLAY_COUNT)
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(0),
            replay_id: text(REPLAY_ID),
            group: text(DLT_GROUP),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventbus_runtime::ErrorClass;

    fn letter() -> DeadLetter {
        let mut record = Record::new("vehicle.state.v1", 7, 4242, Bytes::from_static(b"\0bad"))
            .with_key("veh-1");
        record.timestamp = Some(1_700_000_000_123);
        record.headers.push("trace", Some("abc"));
        record.headers.push(REPLAY_COUNT, Some("2"));
        record.headers.push(CLASS, Some("transient"));
        DeadLetter {
            record,
            class: ErrorClass::Permanent,
            stage: "operator".into(),
            error_type: "eventbus_schemas::error::DecodeError".into(),
            message: "unknown schema id 99".into(),
            attempts: 1,
            first_failure_ms: 1_700_000_001_000,
            job: "analytics".into(),
            group: None,
        }
    }

    #[test]
    fn a_letter_keeps_the_original_and_names_its_failure_in_every_convention() {
        let out = letter_record(&letter(), Some("analytics-group"), "unknown schema id 99");
        assert_eq!(out.key.as_deref(), Some(&b"veh-1"[..]));
        assert_eq!(&out.value[..], b"\0bad");
        assert_eq!(out.timestamp, Some(1_700_000_000_123));
        let h = &out.headers;
        assert_eq!(h.get("trace"), Some(&b"abc"[..]));
        assert_eq!(h.get(DLT_TOPIC), Some(&b"vehicle.state.v1"[..]));
        assert_eq!(h.get(DLT_PARTITION), Some(&7i32.to_be_bytes()[..]));
        assert_eq!(h.get(DLT_OFFSET), Some(&4242i64.to_be_bytes()[..]));
        assert_eq!(h.get(CONNECT_PARTITION), Some(&b"7"[..]));
        assert_eq!(h.get(CONNECT_OFFSET), Some(&b"4242"[..]));
        assert_eq!(h.get(DLT_GROUP), Some(&b"analytics-group"[..]));
        // The earlier failure's class is replaced, the replay count travels on.
        assert_eq!(h.iter().filter(|x| x.key == CLASS).count(), 1);
        assert_eq!(h.get(CLASS), Some(&b"permanent"[..]));
        assert_eq!(h.get(REPLAY_COUNT), Some(&b"2"[..]));
        let ctx = LetterContext::from_headers(h);
        assert_eq!(ctx.topic.as_deref(), Some("vehicle.state.v1"));
        assert_eq!((ctx.partition, ctx.offset), (Some(7), Some(4242)));
        assert_eq!(ctx.timestamp, Some(1_700_000_000_123));
        assert_eq!(ctx.attempts, Some(1));
        assert_eq!(ctx.first_failure_ms, Some(1_700_000_001_000));
        assert_eq!(ctx.replay_count, 2);
        assert_eq!(ctx.stage.as_deref(), Some("operator"));
        assert_eq!(ctx.message.as_deref(), Some("unknown schema id 99"));
    }

    #[test]
    fn connect_only_letters_are_understood() {
        let mut h = Headers::new();
        h.push(CONNECT_TOPIC, Some("t"));
        h.push(CONNECT_PARTITION, Some("3"));
        h.push(CONNECT_OFFSET, Some("10"));
        h.push(DLT_PARTITION, Some(&b"\x01"[..]));
        let ctx = LetterContext::from_headers(&h);
        assert_eq!(
            (ctx.topic.as_deref(), ctx.partition, ctx.offset),
            (Some("t"), Some(3), Some(10))
        );
    }
}
