//! Error classes and the runtime's errors.
//!
//! Every error in eventbus answers [`Classify::class`], and the class alone decides what
//! happens to a record: retry it, quarantine it, or stop the job. Control flow
//! (rebalance, shutdown) is never expressed as an error.

use std::fmt;

use crate::record::Origin;

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Worth retrying with backoff: a timeout, an unavailable downstream.
    Transient,
    /// Retrying cannot help: bad bytes, unknown schema, failed validation. The record goes
    /// to the dead-letter queue. Errors nobody classified are Permanent, never dropped.
    Permanent,
    /// The job cannot go on: bad credentials, a missing topic at start-up, bad configuration.
    Fatal,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Fatal => "fatal",
        })
    }
}

/// Implemented by every error that can reach the executor.
pub trait Classify {
    /// The error's class.
    fn class(&self) -> ErrorClass;
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from an operator or a job author's function, with its class.
///
/// Job authors whose own error type does not implement [`Classify`] wrap it with
/// [`ProcessError::permanent`] or [`ProcessError::transient`].
#[derive(Debug)]
pub struct ProcessError {
    class: ErrorClass,
    type_name: &'static str,
    source: BoxError,
}

impl ProcessError {
    /// An error with an explicit class.
    pub fn new<E: Into<BoxError>>(class: ErrorClass, source: E) -> Self {
        Self {
            class,
            type_name: std::any::type_name::<E>(),
            source: source.into(),
        }
    }

    /// The Rust type of the error it was made from, e.g.
    /// `eventbus_schemas::error::DecodeError`: the exception name of a dead letter.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// A permanent error: the record is bad and retrying will not help.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self::new(ErrorClass::Permanent, source)
    }

    /// A transient error: the same record may succeed later.
    pub fn transient(source: impl Into<BoxError>) -> Self {
        Self::new(ErrorClass::Transient, source)
    }

    /// The underlying error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.source.as_ref()
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for ProcessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

impl Classify for ProcessError {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

/// An error from a sink, for one record or for the sink as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The destination refused or lost the record.
    #[error("sink {sink} could not deliver the record from {origin}: {reason}")]
    Delivery {
        /// Sink name.
        sink: &'static str,
        /// The record's coordinates.
        origin: Origin,
        /// What the destination said.
        reason: String,
        /// Class of the failure.
        class: ErrorClass,
    },
    /// The sink could not flush what it holds.
    #[error("sink {sink} could not flush: {reason}")]
    Flush {
        /// Sink name.
        sink: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A sink dropped a record's acknowledgement without resolving it: a bug in the sink.
    #[error("the acknowledgement for the record from {origin} was dropped unresolved")]
    AckDropped {
        /// The record's coordinates.
        origin: Origin,
    },
}

impl SinkError {
    /// Whether this is a failure of one record that the job's dead-letter queue takes: a
    /// [`SinkError::Delivery`] that is not Fatal (a bad record, or a transient failure
    /// whose retries ran out). Anything else stops the job.
    pub fn is_record_failure(&self) -> bool {
        matches!(self, SinkError::Delivery { class, .. } if *class != ErrorClass::Fatal)
    }
}

impl Classify for SinkError {
    fn class(&self) -> ErrorClass {
        match self {
            SinkError::Delivery { class, .. } => *class,
            SinkError::Flush { .. } => ErrorClass::Transient,
            SinkError::AckDropped { .. } => ErrorClass::Fatal,
        }
    }
}

/// Why a job stopped with an error, or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// A configuration value is missing or wrong.
    #[error("configuration error at `{key}`: {reason}")]
    Config {
        /// The configuration key, e.g. `kafka.bootstrap.servers`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No broker answered within the start-up timeout.
    #[error("could not reach the Kafka brokers `{brokers}` within {timeout_ms} ms: {reason}")]
    BrokersUnreachable {
        /// The bootstrap servers tried.
        brokers: String,
        /// How long we waited.
        timeout_ms: u64,
        /// librdkafka's last word.
        reason: String,
    },
    /// A topic the job reads or writes does not exist on the cluster.
    #[error("topic `{topic}` does not exist on the cluster ({brokers})")]
    TopicMissing {
        /// The topic name.
        topic: String,
        /// The bootstrap servers asked.
        brokers: String,
    },
    /// librdkafka refused an operation.
    #[error("kafka {operation} failed: {source}")]
    Kafka {
        /// What we were doing.
        operation: &'static str,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// An operator failed on a record and nothing downstream handles failures yet.
    #[error("operator failed on the record from {origin} ({class}): {source}")]
    Operator {
        /// The record's coordinates.
        origin: Origin,
        /// The error's class.
        class: ErrorClass,
        /// The operator's error.
        #[source]
        source: ProcessError,
    },
    /// A sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The source ended abnormally.
    #[error("source stopped: {reason}")]
    Source {
        /// What happened.
        reason: String,
    },
}

impl RuntimeError {
    /// The error with the text it quotes about a record (a sink's reason, an operator's
    /// error) passed through [`crate::redact::redact`]. Errors about no record are
    /// returned as they are.
    #[must_use]
    pub fn redacted(self) -> Self {
        if !crate::redact::installed() {
            return self;
        }
        match self {
            Self::Sink(SinkError::Delivery {
                sink,
                origin,
                reason,
                class,
            }) => {
                let reason = crate::redact::redact(&origin, None, &reason);
                Self::Sink(SinkError::Delivery {
                    sink,
                    origin,
                    reason,
                    class,
                })
            }
            Self::Operator {
                origin,
                class,
                source,
            } => {
                let text = crate::redact::redact(&origin, None, &source.to_string());
                Self::Operator {
                    origin,
                    class,
                    source: ProcessError::new(class, text),
                }
            }
            other => other,
        }
    }

    /// A configuration error naming `key`.
    pub fn config(key: &str, reason: impl Into<String>) -> Self {
        RuntimeError::Config {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

impl Classify for RuntimeError {
    fn class(&self) -> ErrorClass {
        match self {
            RuntimeError::Operator { class, .. } => *class,
            RuntimeError::Sink(e) => e.class(),
            // An operation (consuming, committing, creating a client) that fails for a
            // reason other than a passing one cannot go on.
            RuntimeError::Kafka { source, .. } => match source.class() {
                ErrorClass::Transient => ErrorClass::Transient,
                _ => ErrorClass::Fatal,
            },
            _ => ErrorClass::Fatal,
        }
    }
}

/// The one classification of librdkafka's errors, used by the consumer, the sinks and
/// the tools: Transient when librdkafka or a retry gets past it (brokers down, timeouts,
/// leadership moving, a full queue); Fatal when nothing will (authentication,
/// authorization, an unknown topic, librdkafka's own fatal errors); Permanent for the
/// rest, which concern one record (too large, invalid).
impl Classify for rdkafka::error::KafkaError {
    fn class(&self) -> ErrorClass {
        use rdkafka::error::KafkaError as E;
        use rdkafka::types::RDKafkaErrorCode as C;
        if matches!(self, E::MessageConsumptionFatal(_) | E::ClientCreation(_)) {
            return ErrorClass::Fatal;
        }
        match self.rdkafka_error_code() {
            Some(
                C::RequestTimedOut
                | C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::NotCoordinator
                | C::CoordinatorNotAvailable
                | C::CoordinatorLoadInProgress
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::NetworkException
                | C::QueueFull
                | C::MessageTimedOut
                | C::OperationTimedOut
                | C::RebalanceInProgress,
            ) => ErrorClass::Transient,
            Some(
                C::UnknownTopicOrPartition
                | C::UnknownTopic
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::SaslAuthenticationFailed
                | C::Authentication
                | C::Fatal,
            ) => ErrorClass::Fatal,
            _ => ErrorClass::Permanent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_errors_keep_their_class_and_message() {
        let e = ProcessError::transient("downstream busy");
        assert_eq!(e.class(), ErrorClass::Transient);
        assert_eq!(e.to_string(), "downstream busy");
        assert_eq!(
            ProcessError::permanent("bad").class(),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn a_dropped_ack_is_fatal() {
        let e = SinkError::AckDropped {
            origin: Origin {
                topic: "t".into(),
                partition: 1,
                offset: 9,
            },
        };
        assert_eq!(e.class(), ErrorClass::Fatal);
        assert!(e.to_string().contains("topic t partition 1 offset 9"));
    }
}
