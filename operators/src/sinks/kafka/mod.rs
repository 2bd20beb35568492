//! The Kafka sink: produces each record to a topic with an idempotent producer and
//! acknowledges it when the broker's delivery report arrives (`acks=all`).

mod config;
mod sink;

pub use config::{KafkaSinkConfig, Partitioning};
pub use sink::KafkaSink;
