//! A sink that writes each record to the log.

use eventbus_runtime::{Ack, Record, Sink, SinkError};

/// Logs each record (coordinates, key, and the first bytes of the value as text) at
/// `info`, then acknowledges it. For debugging jobs, not for data that must be kept.
#[derive(Debug, Clone, Copy)]
pub struct LogSink {
    max_value_chars: usize,
}

impl Default for LogSink {
    fn default() -> Self {
        Self {
            max_value_chars: 200,
        }
    }
}

impl LogSink {
    /// A log sink that shows at most `max_value_chars` characters of each value.
    pub fn new(max_value_chars: usize) -> Self {
        Self { max_value_chars }
    }
}

impl<T: AsRef<[u8]> + Send + Sync + 'static> Sink<T> for LogSink {
    async fn send(&self, record: Record<T>, ack: Ack) -> Result<(), SinkError> {
        let value = String::from_utf8_lossy(record.value.as_ref());
        let shown: String = value.chars().take(self.max_value_chars).collect();
        let key = record
            .key
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        tracing::info!(
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset,
            key = %key,
            value = %shown,
            "record"
        );
        ack.done();
        Ok(())
    }
}
