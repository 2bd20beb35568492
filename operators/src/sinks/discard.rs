//! A sink that drops every record and acknowledges it: for dry runs and benchmarks of
//! the executor itself.

use eventbus_runtime::{Ack, Record, Sink, SinkError};

/// Acknowledges every record at once and keeps nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardSink;

impl<T: Send + 'static> Sink<T> for DiscardSink {
    async fn send(&self, _record: Record<T>, ack: Ack) -> Result<(), SinkError> {
        ack.done();
        Ok(())
    }
}
