//! The producer side: send, delivery reports, flush.

use std::sync::Arc;
use std::time::Duration;

use eventbus_runtime::config::KafkaProperties;
use eventbus_runtime::kafka::EventProducer;
use eventbus_runtime::{Ack, Classify, Record, RuntimeError, Sink, SinkError};
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::config::{KafkaSinkConfig, Partitioning};

const NAME: &str = "kafka";

/// Produces records to one topic. A record's [`Ack`] is resolved by its delivery report:
/// done when the broker has it with `acks=all`, failed (stopping the job) when
/// librdkafka gives up after its own retries (`message.timeout.ms`).
///
/// The producer is idempotent, so librdkafka's retries neither duplicate nor reorder
/// records within a partition.
#[derive(Clone)]
pub struct KafkaSink {
    producer: Arc<EventProducer<Deliveries>>,
    config: Arc<KafkaSinkConfig>,
    brokers: String,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("config", &self.config)
            .finish()
    }
}

impl KafkaSink {
    /// Creates the producer. `properties` are the same librdkafka properties the source
    /// uses; consumer-only ones are ignored by the producer.
    ///
    /// # Errors
    /// [`RuntimeError::Config`] when idempotence or `acks=all` is switched off, or when
    /// librdkafka rejects a property (its message names it).
    pub fn new(
        properties: &KafkaProperties,
        config: KafkaSinkConfig,
    ) -> Result<Self, RuntimeError> {
        let brokers = properties.require_brokers()?.to_owned();
        let producer: EventProducer<Deliveries> = properties
            .durable_producer("the Kafka sink")?
            .create_with_context(Deliveries {
                topic: config.topic.clone(),
            })
            .map_err(|e| match e {
                KafkaError::ClientCreation(reason) => RuntimeError::config("kafka", reason),
                source => RuntimeError::Kafka {
                    operation: "producer creation",
                    source,
                },
            })?;
        Ok(Self {
            producer: Arc::new(producer),
            config: Arc::new(config),
            brokers,
        })
    }

    /// Checks, within `timeout`, that the brokers answer and the output topic exists, so
    /// a typo fails at start-up instead of after `message.timeout.ms`. Blocks.
    ///
    /// # Errors
    /// [`RuntimeError::BrokersUnreachable`] or [`RuntimeError::TopicMissing`].
    pub fn check_topic(&self, timeout: Duration) -> Result<(), RuntimeError> {
        let topic = &self.config.topic;
        let brokers = self.brokers.clone();
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| RuntimeError::BrokersUnreachable {
                brokers: brokers.clone(),
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                reason: e.to_string(),
            })?;
        eventbus_runtime::kafka::topic_partitions(&metadata, topic, &brokers).map(drop)
    }

    async fn flush_now(&self) -> Result<(), SinkError> {
        let producer = self.producer.clone();
        let timeout = Duration::from_millis(self.config.flush_timeout_ms);
        let result = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SinkError::Flush {
                sink: NAME,
                reason: format!("topic {}: {e}", self.config.topic),
            }),
            Err(e) => Err(SinkError::Flush {
                sink: NAME,
                reason: format!("flush task failed: {e}"),
            }),
        }
    }
}

impl<T: AsRef<[u8]> + Send + Sync + 'static> Sink<T> for KafkaSink {
    async fn send(&self, record: Record<T>, ack: Ack) -> Result<(), SinkError> {
        let headers = (!record.headers.is_empty()).then(|| record.headers.to_kafka());
        let mut out = BaseRecord::with_opaque_to(&self.config.topic, Box::new(ack))
            .payload(record.value.as_ref());
        if let Some(key) = record.key.as_deref() {
            out = out.key(key);
        }
        if let Some(ts) = record.timestamp {
            out = out.timestamp(ts);
        }
        if let Some(hs) = headers {
            out = out.headers(hs);
        }
        if self.config.partitioning == Partitioning::Source {
            out = out.partition(record.partition);
        }
        if let Err((e, back)) = eventbus_runtime::kafka::send(&self.producer, out).await {
            let ack = back.delivery_opaque;
            let origin = ack.origin();
            ack.fail(SinkError::Delivery {
                sink: NAME,
                origin,
                reason: format!("could not enqueue to topic {}: {e}", self.config.topic),
                class: e.class(),
            });
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.flush_now().await
    }
}

/// Resolves each record's ack from its delivery report.
struct Deliveries {
    topic: String,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Box<Ack>) {
        match result {
            Ok(_) => ack.done(),
            Err((e, m)) => {
                let origin = ack.origin();
                ack.fail(SinkError::Delivery {
                    sink: NAME,
                    origin,
                    reason: format!("topic {} partition {}: {e}", self.topic, m.partition()),
                    class: e.class(),
                });
            }
        }
    }
}
