//! The Kafka dead-letter queue: writes each letter to its DLQ topic with an idempotent
//! producer (`acks=all`) and resolves the record's ack only on the broker's
//! acknowledgement.
//!
//! A letter that cannot be written is tried again, `max_attempts` times in all, each
//! bounded by the producer's `message.timeout.ms`; then its ack fails with a Fatal error,
//! which stops the job without committing past the record.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use eventbus_runtime::kafka::EventProducer;
use eventbus_runtime::redact::Redact;
use eventbus_runtime::{
    Ack, DeadLetter, DeadLetterQueue, ErrorClass, KafkaProperties, Record, RuntimeError, SinkError,
};
use eventbus_schemas::{FileRegistry, SchemaRegistry};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext};
use tokio::runtime::Handle;

use crate::envelope::{VALUE_OMITTED, letter_record};

/// The dead-letter producer's `message.max.bytes` unless set: 2 MiB and 64 KiB.
const LETTER_MAX_BYTES: usize = (2 << 20) + (64 << 10);
use crate::pii::PiiRedactor;

/// Settings of a [`KafkaDeadLetters`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlqConfig {
    /// DLQ topic per source topic; a topic not listed goes to `<topic>.dlq`.
    pub topics: HashMap<String, String>,
    /// Fields classified as personal data, per source topic (dotted for nested fields):
    /// their values, found in each record's decoded value, are masked wherever they
    /// appear in the error message written to the headers and the logs.
    pub pii: HashMap<String, Vec<String>>,
    /// Tries per letter before the job stops. Default 5.
    pub max_attempts: u32,
    /// Pause between tries, in milliseconds. Default 1000.
    pub retry_backoff_ms: u64,
    /// The consumer group named in `kafka_dlt-original-consumer-group` (default: the one
    /// the job's source reads as). Replays go to this group only.
    pub group: Option<String>,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            topics: HashMap::new(),
            pii: HashMap::new(),
            max_attempts: 5,
            retry_backoff_ms: 1000,
            group: None,
        }
    }
}

impl DlqConfig {
    /// The DLQ topic of a source topic.
    pub fn dlq_topic(&self, topic: &str) -> String {
        self.topics
            .get(topic)
            .cloned()
            .unwrap_or_else(|| format!("{topic}.dlq"))
    }

    /// Takes the DLQ topic names and PII fields from the catalog.
    pub fn from_catalog(catalog: &eventbus_schemas::Catalog) -> Self {
        Self::default().with_catalog(catalog)
    }

    /// Fills in, for every catalog topic this config does not name, the catalog's DLQ
    /// topic and PII fields. What the config names wins.
    #[must_use]
    pub fn with_catalog(mut self, catalog: &eventbus_schemas::Catalog) -> Self {
        for t in &catalog.topics {
            self.topics
                .entry(t.name.clone())
                .or_insert_with(|| t.dlq_topic());
            self.pii
                .entry(t.name.clone())
                .or_insert_with(|| t.pii.clone());
        }
        self
    }
}

/// A [`DeadLetterQueue`] on Kafka. Cheap to clone.
#[derive(Clone)]
pub struct KafkaDeadLetters {
    inner: Arc<Inner>,
}

struct Inner {
    /// The producer's settings, checked at construction.
    producer_config: ClientConfig,
    /// Created with the first letter: a job whose records never fail holds no producer
    /// (no connection, no producer id at the broker).
    producer: OnceLock<Result<EventProducer<Deliveries>, String>>,
    config: DlqConfig,
    /// Masks the values of the PII fields, found in each letter's decoded value.
    redactor: PiiRedactor,
}

impl std::fmt::Debug for KafkaDeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDeadLetters")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// One letter on its way, carried through the producer as the delivery opaque.
struct Pending {
    queue: KafkaDeadLetters,
    letter: Record<Bytes>,
    dlq_topic: String,
    ack: Ack,
    attempt: u32,
    runtime: Handle,
}

impl KafkaDeadLetters {
    /// Checks the settings; the producer itself is created with the first letter.
    ///
    /// # Errors
    /// [`RuntimeError::Config`] when idempotence or `acks=all` is switched off, a PII
    /// field name cannot be used, or librdkafka rejects a property.
    pub fn new(properties: &KafkaProperties, config: DlqConfig) -> Result<Self, RuntimeError> {
        properties.require_brokers()?;
        if config.max_attempts == 0 {
            return Err(RuntimeError::config(
                "dlq.max_attempts",
                "must be at least 1",
            ));
        }
        let mut cfg = properties.durable_producer("the dead-letter queue")?;
        if properties.get("message.timeout.ms").is_none() {
            cfg.set("message.timeout.ms", "30000");
        }
        // A letter is its record plus headers: room for a record as large as a broker
        // accepts by default (1 MiB) and the context. librdkafka's default (1,000,000)
        // would refuse such a letter.
        if properties.get("message.max.bytes").is_none() {
            cfg.set("message.max.bytes", LETTER_MAX_BYTES.to_string());
        }
        // librdkafka checks every property here, without creating a client.
        cfg.create_native_config().map_err(|e| match e {
            KafkaError::ClientConfig(_, reason, key, value) => {
                RuntimeError::config(&format!("kafka.{key}"), format!("{value:?}: {reason}"))
            }
            other => RuntimeError::config("kafka", other.to_string()),
        })?;
        let registry: Arc<dyn SchemaRegistry> = Arc::new(
            FileRegistry::embedded().map_err(|e| RuntimeError::config("schemas", e.to_string()))?,
        );
        let redactor = PiiRedactor::new(config.pii.clone(), registry, None);
        Ok(Self {
            inner: Arc::new(Inner {
                producer_config: cfg,
                producer: OnceLock::new(),
                config,
                redactor,
            }),
        })
    }

    /// Decodes letters' values through `registry` (default: the file registry compiled
    /// in) to find their PII fields.
    #[must_use]
    pub fn with_registry(self, registry: Arc<dyn SchemaRegistry>) -> Self {
        let inner = Inner {
            producer_config: self.inner.producer_config.clone(),
            producer: OnceLock::new(),
            config: self.inner.config.clone(),
            redactor: PiiRedactor::new(self.inner.config.pii.clone(), registry, None),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// `message`, about the record `record`, with the values of its topic's PII fields
    /// (found in its decoded value) masked.
    pub fn redact(&self, record: &Record<Bytes>, message: &str) -> String {
        self.inner
            .redactor
            .redact(&record.origin(), Some(&record.value), message)
    }

    async fn produce(&self, pending: Box<Pending>) {
        let p = &pending;
        let headers = p.letter.headers.to_kafka();
        // The payload and key are copied by librdkafka; the opaque carries the rest.
        let value = p.letter.value.clone();
        let key = p.letter.key.clone();
        let topic = p.dlq_topic.clone();
        let mut out = BaseRecord::with_opaque_to(&topic, pending)
            .payload(&value[..])
            .headers(headers);
        if let Some(k) = key.as_deref() {
            out = out.key(k);
        }
        if let Some(ts) = out.delivery_opaque.letter.timestamp {
            out = out.timestamp(ts);
        }
        let producer = self.inner.producer.get_or_init(|| {
            self.inner
                .producer_config
                .create_with_context(Deliveries)
                .map_err(|e| format!("cannot create the dead-letter producer: {e}"))
        });
        let producer = match producer {
            Ok(p) => p,
            Err(reason) => {
                let reason = reason.clone();
                out.delivery_opaque.failed(reason);
                return;
            }
        };
        if let Err((e, back)) = eventbus_runtime::kafka::send(producer, out).await {
            if too_large(&e) {
                back.delivery_opaque.without_value();
            } else {
                back.delivery_opaque.failed(e.to_string());
            }
        }
    }
}

/// Whether librdkafka or the broker refused a message for its size.
fn too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge)
    )
}

impl Pending {
    /// The letter is larger than the producer or the DLQ topic accepts: it is written
    /// again without its value, saying the value's size, so the job goes on instead of
    /// stopping at every start. The record itself is still at its coordinates in the
    /// source topic; the error log says where.
    fn without_value(mut self: Box<Self>) {
        if self.letter.value.is_empty() {
            // Too large even without the value: the headers are; nothing smaller to try.
            self.failed("the letter is too large even without its value".into());
            return;
        }
        let size = self.letter.value.len();
        tracing::error!(
            dlq = %self.dlq_topic, origin = %self.ack.origin(), value_bytes = size,
            "the dead letter is larger than the DLQ accepts: writing it without its value; \
             the record is still at its origin in the source topic (raise message.max.bytes \
             of the producer and the DLQ topic to keep such values)"
        );
        self.letter.value = Bytes::new();
        self.letter
            .headers
            .push(VALUE_OMITTED, Some(Bytes::from(size.to_string())));
        let runtime = self.runtime.clone();
        runtime.spawn(async move {
            let queue = self.queue.clone();
            queue.produce(self).await;
        });
    }

    /// One try failed: try again after the backoff, or fail the record's ack (Fatal).
    fn failed(mut self: Box<Self>, reason: String) {
        let cfg = &self.queue.inner.config;
        if self.attempt < cfg.max_attempts {
            tracing::warn!(
                dlq = %self.dlq_topic, origin = %self.ack.origin(), attempt = self.attempt,
                error = %reason, "could not write a dead letter; trying again"
            );
            self.attempt += 1;
            let backoff = Duration::from_millis(cfg.retry_backoff_ms);
            let runtime = self.runtime.clone();
            runtime.spawn(async move {
                tokio::time::sleep(backoff).await;
                let queue = self.queue.clone();
                queue.produce(self).await;
            });
            return;
        }
        let origin = self.ack.origin();
        let reason = format!(
            "could not write the dead letter to topic {} after {} tries: {reason}; \
             the record stays uncommitted",
            self.dlq_topic, self.attempt
        );
        self.ack.fail(SinkError::Delivery {
            sink: "dlq",
            origin,
            reason,
            class: ErrorClass::Fatal,
        });
    }
}

impl DeadLetterQueue for KafkaDeadLetters {
    fn send(&self, letter: DeadLetter, ack: Ack) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let topic = letter.record.topic.to_string();
            let message = self.redact(&letter.record, &letter.message);
            tracing::warn!(
                origin = %letter.record.origin(), class = %letter.class, stage = %letter.stage,
                attempts = letter.attempts, error = %message, "record dead-lettered"
            );
            // The configured group, else the one the job's source reads as.
            let group = self
                .inner
                .config
                .group
                .as_deref()
                .or(letter.group.as_deref());
            let record = letter_record(&letter, group, &message);
            let pending = Box::new(Pending {
                queue: self.clone(),
                letter: record,
                dlq_topic: self.inner.config.dlq_topic(&topic),
                ack,
                attempt: 1,
                runtime: Handle::current(),
            });
            self.produce(pending).await;
        })
    }
}

/// Resolves each letter's ack from its delivery report.
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        match result {
            Ok(_) => pending.ack.done(),
            Err((e, _)) if too_large(e) => pending.without_value(),
            Err((e, _)) => pending.failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pii_values_found_in_the_record_are_masked_in_messages() {
        use eventbus_schemas::events::{Position, VehicleState, VehicleStatus};
        let mut props = KafkaProperties::new();
        props.set("bootstrap.servers", "127.0.0.1:1");
        let mut cfg = DlqConfig::default();
        cfg.pii
            .insert("vehicle.state.v1".into(), vec!["driver_id".into()]);
        let q = KafkaDeadLetters::new(&props, cfg).unwrap();
        let registry = FileRegistry::embedded().unwrap();
        let (id, schema) = registry.latest_of("vehicle.state.v1-value").unwrap();
        let event = VehicleState {
            event_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            vehicle_id: "veh-0001".into(),
            fleet_id: "fleet-01".into(),
            event_time: 1_767_225_600_000,
            position: Position {
                lat: 52.52,
                lon: 13.405,
                heading_deg: None,
            },
            speed_kph: 42.5,
            battery_pct: 81.0,
            status: VehicleStatus::Driving,
            odometer_km: None,
            driver_id: Some("D-123".into()),
            firmware_version: None,
        };
        let value = eventbus_schemas::encode(id, &schema, &event).unwrap();
        let record = Record::new("vehicle.state.v1", 0, 7, Bytes::from(value));
        // However the message quotes it.
        let m = q.redact(
            &record,
            r#"driver "D-123" is not known (driver_id=D-123); D-1234 is someone else, speed=3"#,
        );
        assert_eq!(
            m,
            r#"driver "<redacted>" is not known (driver_id=<redacted>); D-1234 is someone else, speed=3"#
        );
        let other = Record::new("other", 0, 7, Bytes::from_static(b"x"));
        assert_eq!(q.redact(&other, "driver D-123"), "driver D-123");
    }
}
