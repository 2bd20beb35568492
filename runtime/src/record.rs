//! The unit of data that flows through a job.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// A topic and a partition: the unit of ordering and of offset tracking.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number inside the topic.
    pub partition: i32,
}

impl TopicPartition {
    /// Builds a topic-partition pair.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// One Kafka header. Keys and values are raw bytes, as Kafka has them: a key need not be
/// UTF-8 (compare it with a `&str` directly, `header.key == "name"`), and a header may
/// have no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name, byte for byte as the producer wrote it.
    pub key: Bytes,
    /// Header value, `None` for a null header.
    pub value: Option<Bytes>,
}

impl Header {
    /// The name as text, when it is UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.key).ok()
    }
}

/// The headers of a record, in the order Kafka delivered them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<Header>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends a header; Kafka allows repeated names, so nothing is replaced.
    pub fn push(&mut self, key: impl AsRef<[u8]>, value: Option<impl Into<Bytes>>) {
        self.0.push(Header {
            key: Bytes::copy_from_slice(key.as_ref()),
            value: value.map(Into::into),
        });
    }

    /// Appends a header whose name is already in a buffer (no copy).
    pub fn push_raw(&mut self, key: Bytes, value: Option<Bytes>) {
        self.0.push(Header { key, value });
    }

    /// Sets a header, replacing every earlier header of the same name.
    pub fn set(&mut self, key: &str, value: impl Into<Bytes>) {
        self.0.retain(|h| h.key != key);
        self.0.push(Header {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Some(value.into()),
        });
    }

    /// The value of the last header with this name, if any.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|h| h.key == key)
            .and_then(|h| h.value.as_deref())
    }

    /// Reads librdkafka's headers of a consumed record, keys byte for byte (rdkafka's own
    /// accessors panic on a key that is not UTF-8).
    pub fn from_kafka(headers: &rdkafka::message::BorrowedHeaders) -> Self {
        let mut out = Self::new();
        crate::kafka::headers::for_each(headers, |k, v| {
            out.push(k, v.map(Bytes::copy_from_slice));
        });
        out
    }

    /// The headers as librdkafka takes them on a produced record, keys byte for byte.
    pub fn to_kafka(&self) -> rdkafka::message::OwnedHeaders {
        crate::kafka::headers::to_owned(self.0.iter().map(|h| (&h.key[..], h.value.as_deref())))
    }

    /// Iterates the headers in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Header> {
        self.0.iter()
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Header> for Headers {
    fn from_iter<I: IntoIterator<Item = Header>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = std::slice::Iter<'a, Header>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A record read from a source, carrying its Kafka coordinates along every operator.
///
/// The value type changes along a chain (bytes, then an event, then a row); the
/// coordinates never do, so a sink can always acknowledge the offset the record came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<T> {
    /// Topic the record was read from.
    pub topic: Arc<str>,
    /// Partition the record was read from.
    pub partition: i32,
    /// Offset of the record in its partition.
    pub offset: i64,
    /// Message key, if any.
    pub key: Option<Bytes>,
    /// Message headers.
    pub headers: Headers,
    /// Kafka timestamp in milliseconds since the epoch, if the broker gave one.
    pub timestamp: Option<i64>,
    /// The payload, typed by the operators so far.
    pub value: T,
}

impl<T> Record<T> {
    /// A record with no key, headers or timestamp; handy for tests and in-memory sources.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32, offset: i64, value: T) -> Self {
        Self {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            headers: Headers::new(),
            timestamp: None,
            value,
        }
    }

    /// Replaces the value, keeping coordinates, key, headers and timestamp.
    pub fn with_value<U>(self, value: U) -> Record<U> {
        Record {
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key,
            headers: self.headers,
            timestamp: self.timestamp,
            value,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The record's topic-partition.
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition::new(self.topic.clone(), self.partition)
    }

    /// Where the record came from, for error messages and logs.
    pub fn origin(&self) -> Origin {
        Origin {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// Topic, partition and offset of one record: what every error about a record names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topic {} partition {} offset {}",
            self.topic, self.partition, self.offset
        )
    }
}

/// Header naming the consumer group a replayed record is for: the group whose job failed
/// it. Every other group's eventbus job takes such a record as done without processing
/// it, so a replay reaches only the group that failed.
pub const REPLAY_GROUP: &str = "eventbus.replay.group";

impl Headers {
    /// Whether the record is a replay for a consumer group other than `group`.
    pub fn is_replay_for_another_group(&self, group: &str) -> bool {
        self.get(REPLAY_GROUP)
            .is_some_and(|g| g != group.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_every_earlier_header_of_that_name() {
        let mut h = Headers::new();
        h.push("a", Some("1"));
        h.push("a", Some("2"));
        h.push("b", None::<Bytes>);
        h.set("a", "3");
        assert_eq!(h.get("a"), Some(&b"3"[..]));
        assert_eq!(h.len(), 2);
        assert_eq!(h.get("b"), None);
    }

    #[test]
    fn with_value_keeps_coordinates() {
        let r = Record::new("t", 2, 7, 1u8).with_key("k");
        let r2 = r.with_value("x");
        assert_eq!(r2.origin().to_string(), "topic t partition 2 offset 7");
        assert_eq!(r2.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r2.value, "x");
    }
}
