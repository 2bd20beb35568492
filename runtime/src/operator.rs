//! Operators: what a job does to each record between its source and its sink.
//!
//! An operator turns one record into an [`Outcome`]: a record to pass on (whose value type
//! may differ), a decision to filter it out, or a classified failure. Operators are
//! synchronous and run in partition order; anything that waits belongs in a sink.

use crate::error::{Classify, ProcessError};
use crate::record::{Origin, Record};

/// What an operator made of one record.
#[derive(Debug)]
pub enum Outcome<T> {
    /// Pass this record on.
    Emit(Record<T>),
    /// Drop the record on purpose; it counts as done and its offset may be committed.
    Filtered,
    /// The record could not be processed.
    Failed {
        /// Where the record came from.
        origin: Origin,
        /// Why, with its class.
        error: ProcessError,
    },
}

/// One step of a chain. Implementations must be cheap to share between partition tasks.
pub trait Operator<In>: Send + Sync + 'static {
    /// The value type of the records it emits.
    type Out: Send + 'static;

    /// Whether this operator emits every record it keeps exactly as it was given (same
    /// coordinates, key, headers, timestamp and value) and never fails one: a filter, or
    /// no operator at all. With such a chain, a sink that [`crate::Sink::GIVES_BACK`]
    /// failed records holds the original of each record itself, so the job keeps no
    /// copy of it for its dead-letter queue.
    const PASSES_THROUGH: bool = false;

    /// Processes one record.
    fn apply(&self, record: Record<In>) -> Outcome<Self::Out>;
}

/// Passes records through unchanged; the start of every chain.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl<T: Send + 'static> Operator<T> for Identity {
    type Out = T;
    const PASSES_THROUGH: bool = true;
    fn apply(&self, record: Record<T>) -> Outcome<T> {
        Outcome::Emit(record)
    }
}

/// Runs `A`, then `B` on what `A` emitted.
#[derive(Debug, Clone)]
pub struct Then<A, B> {
    first: A,
    second: B,
}

impl<A, B> Then<A, B> {
    /// Chains two operators.
    pub fn new(first: A, second: B) -> Self {
        Self { first, second }
    }
}

impl<In, A, B> Operator<In> for Then<A, B>
where
    A: Operator<In>,
    B: Operator<A::Out>,
{
    type Out = B::Out;
    const PASSES_THROUGH: bool = A::PASSES_THROUGH && B::PASSES_THROUGH;
    fn apply(&self, record: Record<In>) -> Outcome<B::Out> {
        match self.first.apply(record) {
            Outcome::Emit(r) => self.second.apply(r),
            Outcome::Filtered => Outcome::Filtered,
            Outcome::Failed { origin, error } => Outcome::Failed { origin, error },
        }
    }
}

/// Transforms each value; see [`crate::Pipeline::map`].
#[derive(Debug, Clone)]
pub struct Map<F>(pub F);

impl<T, U, F> Operator<T> for Map<F>
where
    F: Fn(T) -> U + Send + Sync + 'static,
    U: Send + 'static,
{
    type Out = U;
    fn apply(&self, record: Record<T>) -> Outcome<U> {
        let value = (self.0)(record.value);
        Outcome::Emit(Record {
            topic: record.topic,
            partition: record.partition,
            offset: record.offset,
            key: record.key,
            headers: record.headers,
            timestamp: record.timestamp,
            value,
        })
    }
}

/// Transforms whole records (key, headers and value); see [`crate::Pipeline::map_record`].
#[derive(Debug, Clone)]
pub struct MapRecord<F>(pub F);

impl<T, U, F> Operator<T> for MapRecord<F>
where
    F: Fn(Record<T>) -> Record<U> + Send + Sync + 'static,
    U: Send + 'static,
{
    type Out = U;
    fn apply(&self, record: Record<T>) -> Outcome<U> {
        let (topic, partition, offset) = (record.topic.clone(), record.partition, record.offset);
        let mut out = (self.0)(record);
        // The coordinates are how the record is acknowledged; a map may not move them.
        out.topic = topic;
        out.partition = partition;
        out.offset = offset;
        Outcome::Emit(out)
    }
}

/// Keeps the records for which the predicate holds; see [`crate::Pipeline::filter`].
#[derive(Debug, Clone)]
pub struct Filter<F>(pub F);

impl<T, F> Operator<T> for Filter<F>
where
    F: Fn(&Record<T>) -> bool + Send + Sync + 'static,
    T: Send + 'static,
{
    type Out = T;
    const PASSES_THROUGH: bool = true;
    fn apply(&self, record: Record<T>) -> Outcome<T> {
        if (self.0)(&record) {
            Outcome::Emit(record)
        } else {
            Outcome::Filtered
        }
    }
}

/// Transforms each value with a function that may fail; see [`crate::Pipeline::try_map`].
#[derive(Debug, Clone)]
pub struct TryMap<F>(pub F);

impl<T, U, E, F> Operator<T> for TryMap<F>
where
    F: Fn(T) -> Result<U, E> + Send + Sync + 'static,
    E: std::error::Error + Classify + Send + Sync + 'static,
    U: Send + 'static,
{
    type Out = U;
    fn apply(&self, record: Record<T>) -> Outcome<U> {
        let origin = record.origin();
        let Record {
            topic,
            partition,
            offset,
            key,
            headers,
            timestamp,
            value,
        } = record;
        match (self.0)(value) {
            Ok(value) => Outcome::Emit(Record {
                topic,
                partition,
                offset,
                key,
                headers,
                timestamp,
                value,
            }),
            Err(e) => Outcome::Failed {
                origin,
                error: ProcessError::new(e.class(), e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    fn emitted<T>(o: Outcome<T>) -> Option<Record<T>> {
        match o {
            Outcome::Emit(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn a_chain_changes_the_value_type_and_keeps_coordinates() {
        let chain = Then::new(
            Map(|b: Vec<u8>| b.len()),
            Then::new(
                Filter(|r: &Record<usize>| r.value > 1),
                Map(|n: usize| n * 10),
            ),
        );
        let out = emitted(chain.apply(Record::new("t", 3, 42, vec![1, 2, 3])));
        let out = out.map(|r| (r.partition, r.offset, r.value));
        assert_eq!(out, Some((3, 42, 30)));
        assert!(matches!(
            chain.apply(Record::new("t", 3, 43, vec![1])),
            Outcome::Filtered
        ));
    }

    #[test]
    fn try_map_failures_name_the_record_and_keep_the_class() {
        let op = TryMap(|s: &'static str| s.parse::<u32>().map_err(ProcessError::permanent));
        match op.apply(Record::new("in", 1, 7, "x")) {
            Outcome::Failed { origin, error } => {
                assert_eq!(origin.offset, 7);
                assert_eq!(error.class(), ErrorClass::Permanent);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn map_record_cannot_move_the_coordinates() {
        let op = MapRecord(|r: Record<u8>| {
            let v = u16::from(r.value) + 1;
            let mut r = r.with_value(v);
            r.offset = 999;
            r.headers.set("h", "v");
            r
        });
        let out = emitted(op.apply(Record::new("t", 0, 5, 1))).map(|r| (r.offset, r.value));
        assert_eq!(out, Some((5, 2)));
    }
}
