//! The consumer thread's poll batch: polled messages copied into records, grouped by
//! partition in order, and kept to the assignment they were polled under.

use std::sync::Arc;

use bytes::Bytes;
use rdkafka::message::{BorrowedMessage, Message};

use super::context::Assignment;
use super::fetch::Polled;
use crate::record::{Record, TopicPartition};

/// Groups polled messages by partition, keeping each partition's order, and keeps each
/// partition's records to the assignment they were polled under (see [`Assignment`]).
#[derive(Default)]
pub(super) struct Batcher {
    lanes: Vec<Lane>,
    last: usize,
    /// The size of every lane's records, so a poll batch can stop at a byte bound.
    pub(super) bytes: usize,
    /// [`Assignment::changes`] when the lanes' generations were last checked.
    seen_changes: u64,
}

/// One partition's records of the current poll batch, and the buffer their keys and
/// values are copied into.
struct Lane {
    tp: TopicPartition,
    /// The assignment the records were polled under; `None` when not owned.
    generation: Option<u64>,
    records: Vec<Record<Bytes>>,
    /// The size of `records`: keys, values and headers.
    bytes: usize,
    arena: Arena,
}

impl Batcher {
    /// Adds a polled message. `only_topic` is the topic of every message when the
    /// subscription names just one: its name then need not be read (and checked as
    /// UTF-8) per message.
    pub(super) fn push(
        &mut self,
        m: &impl Polled,
        only_topic: Option<&str>,
        assignment: &Assignment,
    ) {
        let topic = match only_topic {
            Some(t) => t,
            None => m.topic(),
        };
        let lane = self.lane(topic, m.partition(), assignment);
        let record = to_record(m, &lane.tp.topic, &mut lane.arena);
        let size = record.value.len()
            + record.key.as_ref().map_or(0, Bytes::len)
            + record
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
                .sum::<usize>();
        lane.bytes += size;
        lane.records.push(record);
        self.bytes += size;
    }

    /// The lane of a message just polled: records gathered before a rebalance that
    /// re-assigned their partition are dropped first, since the message belongs to the
    /// new assignment.
    fn lane(&mut self, topic: &str, partition: i32, assignment: &Assignment) -> &mut Lane {
        self.check_generations(assignment);
        let hit = |l: &Lane| l.tp.partition == partition && &*l.tp.topic == topic;
        if !self.lanes.get(self.last).is_some_and(hit) {
            self.last = match self.lanes.iter().position(hit) {
                Some(i) => i,
                None => {
                    let tp = TopicPartition::new(topic, partition);
                    self.lanes.push(Lane {
                        generation: assignment.generation(&tp),
                        tp,
                        records: Vec::new(),
                        bytes: 0,
                        arena: Arena::default(),
                    });
                    self.lanes.len() - 1
                }
            };
        }
        &mut self.lanes[self.last]
    }

    /// After any assign or revoke: a lane whose partition was revoked, or revoked and
    /// assigned again, loses the records it gathered under the old assignment. They were
    /// never registered, so never committed; the partition's owner reads them again.
    fn check_generations(&mut self, assignment: &Assignment) {
        let changes = assignment.changes();
        if changes == self.seen_changes {
            return;
        }
        self.seen_changes = changes;
        for lane in &mut self.lanes {
            let now = assignment.generation(&lane.tp);
            if now != lane.generation {
                if !lane.records.is_empty() {
                    tracing::debug!(
                        partition = %lane.tp,
                        records = lane.records.len(),
                        "dropping records polled under an earlier assignment"
                    );
                }
                lane.records.clear();
                self.bytes -= lane.bytes;
                lane.bytes = 0;
                lane.generation = now;
            }
        }
    }

    /// Hands every owned partition's records to `deliver`.
    pub(super) fn deliver(
        &mut self,
        assignment: &Assignment,
        mut deliver: impl FnMut(&TopicPartition, Vec<Record<Bytes>>, usize),
    ) {
        self.check_generations(assignment);
        self.lanes.retain_mut(|lane| {
            if lane.generation.is_none() {
                return false;
            }
            if !lane.records.is_empty() {
                let next = Vec::with_capacity(lane.records.len());
                let records = std::mem::replace(&mut lane.records, next);
                deliver(&lane.tp, records, std::mem::take(&mut lane.bytes));
            }
            true
        });
        self.bytes = 0;
        self.last = 0;
    }
}

/// Copies message bytes into shared chunks, so a record costs no allocation of its own:
/// with one `malloc` per key and per value, the consumer thread and the threads that
/// free records contended on the allocator's locks, costing more CPU than librdkafka's
/// own fetch path. A chunk is per partition, so a slow partition pins only its own.
#[derive(Default)]
struct Arena {
    buf: bytes::BytesMut,
}

/// Bytes per chunk; larger messages get a chunk of their own size.
const ARENA_CHUNK: usize = 64 * 1024;

impl Arena {
    fn copy(&mut self, data: &[u8]) -> Bytes {
        if data.is_empty() {
            return Bytes::new();
        }
        if self.buf.capacity() < data.len() {
            self.buf = bytes::BytesMut::with_capacity(data.len().max(ARENA_CHUNK));
        }
        self.buf.extend_from_slice(data);
        self.buf.split().freeze()
    }
}

fn to_record(m: &impl Polled, topic: &Arc<str>, arena: &mut Arena) -> Record<Bytes> {
    let mut headers = crate::record::Headers::new();
    m.headers(|k, v| headers.push_raw(arena.copy(k), v.map(|v| arena.copy(v))));
    Record {
        topic: topic.clone(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| arena.copy(k)),
        headers,
        timestamp: m.timestamp(),
        value: m.payload().map(|v| arena.copy(v)).unwrap_or_default(),
    }
}

impl Polled for BorrowedMessage<'_> {
    fn topic(&self) -> &str {
        Message::topic(self)
    }
    fn partition(&self) -> i32 {
        Message::partition(self)
    }
    fn offset(&self) -> i64 {
        Message::offset(self)
    }
    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }
    fn payload(&self) -> Option<&[u8]> {
        Message::payload(self)
    }
    fn timestamp(&self) -> Option<i64> {
        Message::timestamp(self).to_millis()
    }
    fn headers(&self, f: impl FnMut(&[u8], Option<&[u8]>)) {
        if !super::headers::borrowed_may_have_headers(self) {
            return;
        }
        if let Some(hs) = Message::headers(self) {
            super::headers::for_each(hs, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gather(
        batcher: &mut Batcher,
        assignment: &Assignment,
        tp: &TopicPartition,
        offsets: std::ops::Range<i64>,
    ) {
        for o in offsets {
            let lane = batcher.lane(&tp.topic, tp.partition, assignment);
            lane.records
                .push(Record::new(tp.topic.clone(), tp.partition, o, Bytes::new()));
        }
    }

    #[test]
    fn records_polled_before_a_revoke_and_reassign_never_reach_the_new_assignment() {
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let assignment = Assignment::default();
        assignment.assign([a.clone(), b.clone()]);
        let mut batcher = Batcher::default();
        // One batch, several polls: records 100..150 of `a` and 0..5 of `b`; then a poll
        // runs the revoke of `a` and its assignment again, and fetches `a` from its
        // committed offset, 80.
        gather(&mut batcher, &assignment, &a, 100..150);
        gather(&mut batcher, &assignment, &b, 0..5);
        assignment.revoke(std::slice::from_ref(&a));
        assignment.assign([a.clone()]);
        gather(&mut batcher, &assignment, &a, 80..90);
        let mut delivered = Vec::new();
        batcher.deliver(&assignment, |tp, records, _| {
            delivered.push((
                tp.clone(),
                records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            ));
        });
        delivered.sort();
        assert_eq!(
            delivered,
            vec![
                (a.clone(), (80..90).collect()),
                (b.clone(), (0..5).collect())
            ]
        );

        // A revoke whose partition is not assigned again before delivery drops its lane.
        gather(&mut batcher, &assignment, &b, 5..8);
        assignment.revoke(std::slice::from_ref(&b));
        let mut after = Vec::new();
        batcher.deliver(&assignment, |tp, records, _| {
            after.push((tp.clone(), records.len()))
        });
        assert!(after.is_empty(), "{after:?}");
        assert_eq!(batcher.lanes.len(), 1);
    }

    #[test]
    fn arena_copies_are_exact_and_independent_across_chunks() {
        let mut arena = Arena::default();
        let big = vec![7u8; ARENA_CHUNK + 10];
        let inputs: Vec<Vec<u8>> = (0..5000u32)
            .map(|i| i.to_be_bytes().repeat((i % 50) as usize))
            .chain([big, Vec::new(), b"tail".to_vec()])
            .collect();
        let copies: Vec<Bytes> = inputs.iter().map(|d| arena.copy(d)).collect();
        for (d, c) in inputs.iter().zip(&copies) {
            assert_eq!(&d[..], &c[..]);
        }
    }
}
