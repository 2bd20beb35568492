//! Sinks. Each acknowledges a record only once it is durable at its destination.

pub mod discard;
pub mod kafka;
pub mod log;
pub mod parquet;
