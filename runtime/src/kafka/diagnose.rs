//! Why a client cannot reach its brokers.
//!
//! librdkafka reports a failed TLS handshake or a refused SASL login only through its
//! error callback, and keeps retrying; the call the application is waiting on (metadata,
//! a delivery) then fails later with a bare "broker transport failure" or a timeout.
//! [`LastError`] keeps what the callback said last, so that such a failure can name its
//! cause.

use std::sync::Mutex;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

/// The last error librdkafka reported for one client, with its reason.
#[derive(Debug, Default)]
pub struct LastError(Mutex<Recorded>);

#[derive(Debug, Clone, Default)]
struct Recorded {
    last: Option<String>,
    /// The last failed TLS handshake or refused SASL login: retrying will not help, and
    /// the "all brokers down" that follows it must not hide it.
    refused: Option<String>,
}

impl LastError {
    /// Keeps `error` and librdkafka's `reason` (which names the broker, and says
    /// "SSL handshake failed" or "SASL authentication error" where that is the cause),
    /// and logs them as librdkafka's default callback would.
    pub fn record(&self, error: &KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
        let code = error.rdkafka_error_code();
        // librdkafka says "SSL handshake failed" for most refusals, but a certificate
        // that does not verify can come as a transport failure with OpenSSL's own text.
        let tls = code == Some(Code::SSL)
            || reason.contains("SSL handshake failed")
            || reason.contains("SSL routines");
        let sasl = code == Some(Code::Authentication) || reason.contains("SASL authentication");
        let text = if tls {
            format!("TLS handshake with the broker failed: {reason}")
        } else if sasl {
            format!("SASL authentication was refused (mechanism, user or password): {reason}")
        } else {
            format!("{error}: {reason}")
        };
        let mut recorded = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if tls || sasl {
            recorded.refused = Some(text.clone());
        }
        // "All brokers are down" follows the error that says why ("Connection refused"):
        // keep that one.
        if code != Some(Code::AllBrokersDown) || recorded.last.is_none() {
            recorded.last = Some(text);
        }
    }

    /// The most telling error recorded: the last refusal (TLS, SASL), else the last
    /// error of any kind.
    pub fn get(&self) -> Option<String> {
        let r = self.recorded();
        r.refused.or(r.last)
    }

    /// The last failed TLS handshake or refused SASL login, if any: a client waiting on
    /// the brokers should give up at once and say so.
    pub fn refused(&self) -> Option<String> {
        self.recorded().refused
    }

    fn recorded(&self) -> Recorded {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `failure`, followed by the last error the brokers' connections reported, if any.
    pub fn explain(&self, failure: impl std::fmt::Display) -> String {
        match self.get() {
            Some(last) => format!("{failure} (last connection error: {last})"),
            None => failure.to_string(),
        }
    }
}

/// A context that keeps the last error librdkafka reported.
pub trait Remembers: ConsumerContext {
    /// Where the last error is kept.
    fn last_error(&self) -> &LastError;
}

impl Remembers for Diagnosing {
    fn last_error(&self) -> &LastError {
        &self.last
    }
}

/// Fetches cluster metadata (of `topic`, or of every topic) within `timeout`, in short
/// tries, giving up at once when the connection is refused for TLS or SASL: such a
/// client would otherwise retry until the timeout and then fail without saying why.
///
/// Between tries it polls `consumer`, which serves librdkafka's error callbacks: so the
/// consumer must be neither subscribed nor assigned yet, or records would be lost.
///
/// # Errors
/// The metadata request failed or timed out; the message says why, when librdkafka did.
pub fn fetch_metadata<C: Remembers>(
    consumer: &BaseConsumer<C>,
    topic: Option<&str>,
    timeout: std::time::Duration,
) -> Result<rdkafka::metadata::Metadata, String> {
    let last = consumer.context().last_error();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let slice = left.min(std::time::Duration::from_millis(500));
        match consumer.fetch_metadata(topic, slice) {
            Ok(md) => return Ok(md),
            Err(e) => {
                // Serves the error callbacks queued meanwhile, one event per poll. A poll
                // that served an event also returns `None`, so the count bounds the loop,
                // not the first `None` (stopping there served one event per try, and a
                // refusal queued behind "all brokers down" was seen only at the timeout).
                for _ in 0..100 {
                    let _ = consumer.poll(std::time::Duration::ZERO);
                }
                if let Some(refused) = last.refused() {
                    return Err(refused);
                }
                if std::time::Instant::now() >= deadline {
                    return Err(last.explain(e));
                }
            }
        }
    }
}

/// A client context that only remembers the last error: for the command-line tools'
/// consumers, producers and admin clients.
#[derive(Debug, Default)]
pub struct Diagnosing {
    /// What librdkafka reported last.
    pub last: LastError,
}

impl ClientContext for Diagnosing {
    fn error(&self, error: KafkaError, reason: &str) {
        self.last.record(&error, reason);
    }
}

impl ConsumerContext for Diagnosing {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_explained_by_the_last_connection_error() {
        let last = LastError::default();
        assert_eq!(last.explain("metadata timed out"), "metadata timed out");
        last.record(
            &KafkaError::Global(rdkafka::types::RDKafkaErrorCode::SSL),
            "ssl://127.0.0.1:9/bootstrap: SSL handshake failed",
        );
        let said = last.explain("metadata timed out");
        assert!(
            said.starts_with("metadata timed out (last connection error: TLS handshake")
                && said.contains("SSL handshake failed"),
            "{said}"
        );
        assert!(last.refused().is_some());
        last.record(
            &KafkaError::Global(rdkafka::types::RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert!(
            last.explain("x").contains("SSL handshake failed"),
            "the refusal is not hidden by what follows it"
        );
        let other = LastError::default();
        other.record(
            &KafkaError::Global(rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure),
            "127.0.0.1:9/bootstrap: Connection refused",
        );
        other.record(
            &KafkaError::Global(rdkafka::types::RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert!(other.refused().is_none(), "a refused TCP connect may heal");
        let openssl = LastError::default();
        openssl.record(
            &KafkaError::Global(rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure),
            "ssl://127.0.0.1:9/bootstrap: ssl/statem/statem_clnt.c:2125:\
             tls_post_process_server_certificate error:0A000086:SSL routines::\
             certificate verify failed",
        );
        assert!(
            openssl
                .refused()
                .is_some_and(|r| r.starts_with("TLS handshake with the broker failed")),
            "a certificate OpenSSL refused, reported as a transport failure, is a TLS refusal"
        );
        assert!(
            other.explain("x").contains("Connection refused"),
            "the cause is not hidden by 'all brokers down'"
        );
    }
}
