//! Reading letters back from a DLQ topic, and selecting them with filters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventbus_runtime::kafka::{Diagnosing, Remembers};
use eventbus_runtime::{Headers, KafkaProperties, RuntimeError};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use regex::Regex;

use crate::DlqError;
use crate::classify::Classifier;
use crate::envelope::LetterContext;

/// How long a metadata or offset request may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// A letter as stored in its DLQ topic.
#[derive(Debug, Clone)]
pub struct StoredLetter {
    /// The DLQ topic.
    pub dlq_topic: String,
    /// Partition in the DLQ topic.
    pub dlq_partition: i32,
    /// Offset in the DLQ topic.
    pub dlq_offset: i64,
    /// The original key.
    pub key: Option<Bytes>,
    /// The original value.
    pub value: Bytes,
    /// Every header: the original ones and the context.
    pub headers: Headers,
    /// The original timestamp.
    pub timestamp: Option<i64>,
    /// What the headers say about the failure.
    pub context: LetterContext,
    /// The category the classifier gave it.
    pub category: String,
}

/// A consumer with this client's properties and no group of its own unless given; it
/// remembers why it cannot reach the brokers (a failed TLS handshake, a refused login).
pub(crate) fn consumer(
    props: &KafkaProperties,
    group: &str,
) -> Result<BaseConsumer<Diagnosing>, DlqError> {
    let mut cfg = ClientConfig::new();
    for (k, v) in props.iter() {
        cfg.set(k, v);
    }
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    cfg.create_with_context(Diagnosing::default())
        .map_err(|e| DlqError::kafka("creating the Kafka consumer", e))
}

/// The end offset of every partition of `topic`; `brokers` names the cluster in errors.
/// `c` must be neither subscribed nor assigned yet: it is first asked for the topic's
/// metadata, so that unreachable brokers fail with the reason (TLS, SASL) at once.
///
/// # Errors
/// The topic does not exist or the brokers do not answer.
pub fn end_offsets<C: Remembers>(
    c: &BaseConsumer<C>,
    brokers: &str,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, DlqError> {
    eventbus_runtime::kafka::fetch_metadata(c, Some(topic), TIMEOUT).map_err(|reason| {
        RuntimeError::BrokersUnreachable {
            brokers: brokers.to_owned(),
            timeout_ms: u64::try_from(TIMEOUT.as_millis()).unwrap_or(u64::MAX),
            reason,
        }
    })?;
    let ends = eventbus_runtime::kafka::watermarks(c, topic, brokers, TIMEOUT)?
        .into_iter()
        .map(|(p, (_, high))| (p, high))
        .collect();
    Ok(ends)
}

/// Reads `topic` from `start` (per partition; the beginning where absent) up to the end
/// offsets it had when called, handing each letter to `f` in partition order. Returns
/// those end offsets.
///
/// # Errors
/// The topic cannot be read to its end within a few minutes, or `f` fails.
pub fn read<E: From<DlqError>>(
    props: &KafkaProperties,
    topic: &str,
    start: &BTreeMap<i32, i64>,
    classifier: &Classifier,
    mut f: impl FnMut(StoredLetter) -> Result<(), E>,
) -> Result<BTreeMap<i32, i64>, E> {
    let c = consumer(props, "eventbus-dlq-reader").map_err(E::from)?;
    let ends = end_offsets(&c, props.brokers().unwrap_or_default(), topic).map_err(E::from)?;
    let mut tpl = TopicPartitionList::new();
    let mut open = BTreeMap::new();
    for (&p, &end) in &ends {
        let from = start.get(&p).copied().unwrap_or(0);
        if from < end {
            let offset = if from <= 0 {
                Offset::Beginning
            } else {
                Offset::Offset(from)
            };
            tpl.add_partition_offset(topic, p, offset)
                .map_err(|e| E::from(DlqError::kafka(format!("reading {topic}"), e)))?;
            open.insert(p, end);
        }
    }
    if open.is_empty() {
        return Ok(ends);
    }
    c.assign(&tpl)
        .map_err(|e| E::from(DlqError::kafka(format!("reading {topic}"), e)))?;
    let mut last_progress = Instant::now();
    while !open.is_empty() {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let (p, o) = (m.partition(), m.offset());
                let Some(&end) = open.get(&p) else { continue };
                if o + 1 >= end {
                    open.remove(&p);
                }
                if o < end {
                    f(stored(topic, &m, classifier))?;
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "reading letters"),
            None => {}
        }
        if last_progress.elapsed() > Duration::from_secs(120) {
            return Err(E::from(DlqError::Stalled {
                topic: topic.to_owned(),
                partitions: open.keys().copied().collect(),
                seconds: 120,
            }));
        }
    }
    Ok(ends)
}

fn stored(topic: &str, m: &BorrowedMessage<'_>, classifier: &Classifier) -> StoredLetter {
    let headers = m.headers().map(Headers::from_kafka).unwrap_or_default();
    let context = LetterContext::from_headers(&headers);
    let category = classifier.classify(&context);
    StoredLetter {
        dlq_topic: topic.to_owned(),
        dlq_partition: m.partition(),
        dlq_offset: m.offset(),
        key: m.key().map(Bytes::copy_from_slice),
        value: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
        headers,
        timestamp: m.timestamp().to_millis(),
        context,
        category,
    }
}

/// Which letters an operator means. Every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct LetterFilter {
    /// Categories (any of).
    pub categories: Vec<String>,
    /// Error class: `transient` or `permanent`.
    pub class: Option<String>,
    /// First failure at or after (ms since the epoch).
    pub since_ms: Option<i64>,
    /// First failure before (ms since the epoch).
    pub until_ms: Option<i64>,
    /// Original partition.
    pub partition: Option<i32>,
    /// Original offsets, `start..end` (end exclusive).
    pub offsets: Option<(i64, i64)>,
    /// The key, as text.
    pub key: Option<String>,
    /// A pattern the error message must match.
    pub error_matches: Option<Regex>,
}

impl LetterFilter {
    /// Whether `l` is selected.
    pub fn matches(&self, l: &StoredLetter) -> bool {
        let c = &l.context;
        let failed = c.first_failure_ms;
        (self.categories.is_empty() || self.categories.contains(&l.category))
            && self
                .class
                .as_ref()
                .is_none_or(|k| c.class.as_ref().is_some_and(|h| h.eq_ignore_ascii_case(k)))
            && self.since_ms.is_none_or(|s| failed.is_some_and(|f| f >= s))
            && self.until_ms.is_none_or(|u| failed.is_some_and(|f| f < u))
            && self.partition.is_none_or(|p| c.partition == Some(p))
            && self
                .offsets
                .is_none_or(|(a, b)| c.offset.is_some_and(|o| o >= a && o < b))
            && self
                .key
                .as_ref()
                .is_none_or(|k| l.key.as_deref() == Some(k.as_bytes()))
            && self
                .error_matches
                .as_ref()
                .is_none_or(|re| c.message.as_deref().is_some_and(|m| re.is_match(m)))
    }

    /// A stable description, part of a replay's id.
    pub fn describe(&self) -> String {
        format!(
            "categories={:?} class={:?} since={:?} until={:?} partition={:?} offsets={:?} key={:?} error={:?}",
            self.categories,
            self.class,
            self.since_ms,
            self.until_ms,
            self.partition,
            self.offsets,
            self.key,
            self.error_matches.as_ref().map(Regex::as_str)
        )
    }
}

/// Parses `A..B` (end exclusive) or `A..=B` (end inclusive) into `(A, B_exclusive)`.
///
/// # Errors
/// Anything else, quoted.
pub fn parse_offsets(text: &str) -> Result<(i64, i64), String> {
    let bad = || format!("`{text}` is not an offset range like 100..200 or 100..=199");
    let (a, b, inclusive) = match text.split_once("..=") {
        Some((a, b)) => (a, b, true),
        None => {
            let (a, b) = text.split_once("..").ok_or_else(bad)?;
            (a, b, false)
        }
    };
    let a: i64 = if a.is_empty() {
        0
    } else {
        a.trim().parse().map_err(|_| bad())?
    };
    let b: i64 = if b.is_empty() {
        i64::MAX
    } else {
        let b: i64 = b.trim().parse().map_err(|_| bad())?;
        if inclusive { b.saturating_add(1) } else { b }
    };
    if b <= a {
        return Err(format!("`{text}` selects no offset"));
    }
    Ok((a, b))
}

/// Parses a time: milliseconds since the epoch, `YYYY-MM-DD` (midnight UTC), or RFC 3339
/// (`2026-11-27T10:00:00Z`, fractions and offsets allowed).
///
/// # Errors
/// Anything else, quoted.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis());
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            format!(
                "`{text}` is not a time: use ms since the epoch, 2026-11-27 or 2026-11-27T10:00:00Z"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(
        partition: i32,
        offset: i64,
        key: &str,
        class: &str,
        failed: i64,
        message: &str,
    ) -> StoredLetter {
        StoredLetter {
            dlq_topic: "t.dlq".into(),
            dlq_partition: 0,
            dlq_offset: 0,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: Bytes::new(),
            headers: Headers::new(),
            timestamp: None,
            context: LetterContext {
                topic: Some("t".into()),
                partition: Some(partition),
                offset: Some(offset),
                class: Some(class.into()),
                first_failure_ms: Some(failed),
                message: Some(message.into()),
                ..LetterContext::default()
            },
            category: "validation".into(),
        }
    }

    #[test]
    fn every_filter_condition_must_hold() {
        let l = letter(
            3,
            150,
            "veh-7",
            "permanent",
            1_000,
            "battery_pct 180 is outside",
        );
        let all = LetterFilter {
            categories: vec!["validation".into(), "timeout".into()],
            class: Some("PERMANENT".into()),
            since_ms: Some(1_000),
            until_ms: Some(1_001),
            partition: Some(3),
            offsets: Some((100, 151)),
            key: Some("veh-7".into()),
            error_matches: Some(Regex::new("battery_pct \\d+").unwrap()),
        };
        assert!(all.matches(&l));
        assert!(LetterFilter::default().matches(&l));
        let misses = [
            LetterFilter {
                categories: vec!["timeout".into()],
                ..all.clone()
            },
            LetterFilter {
                class: Some("transient".into()),
                ..all.clone()
            },
            LetterFilter {
                since_ms: Some(1_001),
                ..all.clone()
            },
            LetterFilter {
                until_ms: Some(1_000),
                ..all.clone()
            },
            LetterFilter {
                partition: Some(2),
                ..all.clone()
            },
            LetterFilter {
                offsets: Some((151, 200)),
                ..all.clone()
            },
            LetterFilter {
                key: Some("veh-8".into()),
                ..all.clone()
            },
            LetterFilter {
                error_matches: Some(Regex::new("speed").unwrap()),
                ..all.clone()
            },
        ];
        for (i, f) in misses.iter().enumerate() {
            assert!(!f.matches(&l), "condition {i} should exclude the letter");
        }
    }

    #[test]
    fn offsets_and_times_parse_or_say_what_is_expected() {
        assert_eq!(parse_offsets("100..200"), Ok((100, 200)));
        assert_eq!(parse_offsets("100..=199"), Ok((100, 200)));
        assert_eq!(parse_offsets("5.."), Ok((5, i64::MAX)));
        assert!(parse_offsets("9..3").is_err());
        assert!(parse_offsets("x").unwrap_err().contains("`x`"));
        assert_eq!(parse_time("0"), Ok(0));
        assert_eq!(parse_time("1970-01-02"), Ok(86_400_000));
        assert_eq!(
            parse_time("2024-02-29T13:00:00.5Z"),
            Ok(1_709_211_600_000 + 500)
        );
        assert!(parse_time("yesterday").unwrap_err().contains("2026-11-27"));
    }
}
