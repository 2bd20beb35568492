//! Blocking retry with exponential backoff and full jitter.
//!
//! [`Retry`] wraps a sink. Each record is sent and its acknowledgement awaited before the
//! partition moves on; a [`ErrorClass::Transient`] failure is retried after a random
//! delay in `[0, min(max_delay, initial_delay × multiplier^(n-1))]` (the "full jitter"
//! schedule, which spreads the retries of many clients instead of synchronising them).
//! While a partition backs off it is paused at the consumer, so it fetches nothing new
//! and the other partitions keep flowing; the consumer keeps polling, so the group
//! session never times out. When the attempts or the elapsed time run out, the record
//! fails with its last error and the number of attempts, which sends it to the job's
//! dead-letter queue if it has one. Permanent failures are not retried.
//!
//! Because each record waits for its own acknowledgement, order within a partition is
//! kept, at the price of one round trip per record: wrap sinks that settle records one
//! by one (HTTP, databases), not batching sinks, whose acks wait for a whole file.

use std::time::{Duration, Instant};

use eventbus_runtime::{Ack, Classify, ErrorClass, Record, RuntimeError, Sink, SinkError};
use rand::Rng;

/// When and how often to retry.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Ceiling of the first delay, in milliseconds. Default 100.
    pub initial_delay_ms: u64,
    /// Growth of the ceiling per retry. Default 2.0; at least 1.
    pub multiplier: f64,
    /// The largest ceiling, in milliseconds. Default 30000.
    pub max_delay_ms: u64,
    /// Tries in all, the first included. Default 10; at least 1.
    pub max_attempts: u32,
    /// Give up when the next retry would start later than this after the first failure,
    /// in milliseconds. Default 300000 (5 minutes).
    pub max_elapsed_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_delay_ms: 100,
            multiplier: 2.0,
            max_delay_ms: 30_000,
            max_attempts: 10,
            max_elapsed_ms: 300_000,
        }
    }
}

impl RetryPolicy {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`RuntimeError::Config`] naming the `retry.*` key that is out of range.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if self.max_attempts == 0 {
            return Err(RuntimeError::config(
                "retry.max_attempts",
                "must be at least 1 (the first try counts)",
            ));
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(RuntimeError::config(
                "retry.multiplier",
                "must be a finite number of at least 1.0",
            ));
        }
        if self.max_delay_ms < self.initial_delay_ms {
            return Err(RuntimeError::config(
                "retry.max_delay_ms",
                "must be at least retry.initial_delay_ms",
            ));
        }
        Ok(())
    }

    /// The ceiling of the delay before retry number `retry` (1 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let ms = self.initial_delay_ms as f64 * self.multiplier.powi(exponent);
        let capped = ms.min(self.max_delay_ms as f64);
        Duration::from_millis(capped as u64)
    }

    /// The delay before retry number `retry`: uniform in `[0, ceiling(retry)]`.
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(retry).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=ceiling))
    }

    /// The delay before the next try after `attempts` tries, the first failure having
    /// been `elapsed` ago; `None` when the budget is spent.
    pub fn next_delay(
        &self,
        attempts: u32,
        elapsed: Duration,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let delay = self.delay(attempts, rng);
        (elapsed + delay <= Duration::from_millis(self.max_elapsed_ms)).then_some(delay)
    }
}

/// A sink that retries transient failures of `inner`; see the module docs.
#[derive(Debug, Clone)]
pub struct Retry<K> {
    inner: K,
    policy: RetryPolicy,
}

impl<K> Retry<K> {
    /// Wraps `inner`.
    ///
    /// # Errors
    /// [`RuntimeError::Config`] when the policy is out of range.
    pub fn new(inner: K, policy: RetryPolicy) -> Result<Self, RuntimeError> {
        policy.validate()?;
        Ok(Self { inner, policy })
    }
}

impl<T, K> Sink<T> for Retry<K>
where
    T: Clone + Send + Sync + 'static,
    K: Sink<T>,
{
    async fn send(&self, record: Record<T>, mut ack: Ack) -> Result<(), SinkError> {
        let mut attempts = 0u32;
        let mut first_failure: Option<(Instant, i64)> = None;
        loop {
            attempts += 1;
            let (inner_ack, outcome) = Ack::channel(record.origin());
            self.inner.send(record.clone(), inner_ack).await?;
            let error = match outcome.await {
                Ok(Ok(())) => {
                    ack.hold_partition(false);
                    ack.done();
                    return Ok(());
                }
                Ok(Err(e)) => e,
                Err(_) => SinkError::AckDropped {
                    origin: record.origin(),
                },
            };
            let (since, first_ms) = *first_failure
                .get_or_insert_with(|| (Instant::now(), eventbus_runtime::dead_letter::now_ms()));
            let delay = (error.class() == ErrorClass::Transient)
                .then(|| {
                    self.policy
                        .next_delay(attempts, since.elapsed(), &mut rand::rng())
                })
                .flatten();
            let Some(delay) = delay else {
                ack.hold_partition(false);
                ack.set_attempts(attempts, first_ms);
                ack.fail(error);
                return Ok(());
            };
            let origin = record.origin();
            metrics::counter!("eventbus_retry_attempts_total", "topic" => origin.topic.to_string())
                .increment(1);
            let shown = eventbus_runtime::redact::redact(&origin, None, &error.to_string());
            tracing::warn!(
                %origin, attempts, delay_ms = delay.as_millis() as u64,
                error = %shown, "transient failure; retrying"
            );
            ack.hold_partition(true);
            tokio::time::sleep(delay).await;
        }
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.inner.flush().await
    }

    async fn partitions_revoked(
        &self,
        partitions: &[eventbus_runtime::TopicPartition],
    ) -> Result<(), SinkError> {
        self.inner.partitions_revoked(partitions).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn policy() -> impl Strategy<Value = RetryPolicy> {
        (
            1u64..2_000,
            1.0f64..4.0,
            0u64..60_000,
            1u32..30,
            0u64..600_000,
        )
            .prop_map(
                |(initial, multiplier, extra, attempts, elapsed)| RetryPolicy {
                    initial_delay_ms: initial,
                    multiplier,
                    max_delay_ms: initial + extra,
                    max_attempts: attempts,
                    max_elapsed_ms: elapsed,
                },
            )
    }

    proptest! {
        #[test]
        fn delays_stay_under_a_ceiling_that_grows_then_caps(p in policy(), seed: u64) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut previous = Duration::ZERO;
            for retry in 1..40 {
                let ceiling = p.ceiling(retry);
                prop_assert!(ceiling >= previous, "the ceiling never shrinks");
                prop_assert!(ceiling <= Duration::from_millis(p.max_delay_ms));
                if retry == 1 {
                    prop_assert_eq!(ceiling, Duration::from_millis(p.initial_delay_ms));
                }
                prop_assert!(p.delay(retry, &mut rng) <= ceiling);
                previous = ceiling;
            }
        }

        #[test]
        fn the_budget_ends_the_schedule(p in policy(), seed: u64) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut elapsed = Duration::ZERO;
            let mut attempts = 1;
            while let Some(d) = p.next_delay(attempts, elapsed, &mut rng) {
                elapsed += d;
                attempts += 1;
                prop_assert!(elapsed <= Duration::from_millis(p.max_elapsed_ms));
            }
            prop_assert!(attempts <= p.max_attempts);
        }
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let p = RetryPolicy {
            initial_delay_ms: 1000,
            ..RetryPolicy::default()
        };
        let mut rng = SmallRng::seed_from_u64(7);
        let delays: Vec<u64> = (0..2000)
            .map(|_| p.delay(1, &mut rng).as_millis() as u64)
            .collect();
        let low = delays.iter().filter(|d| **d < 250).count();
        let high = delays.iter().filter(|d| **d > 750).count();
        // Uniform on [0, 1000]: about a quarter below 250 and above 750.
        assert!((400..600).contains(&low), "{low} of 2000 below 250 ms");
        assert!((400..600).contains(&high), "{high} of 2000 above 750 ms");
    }

    #[test]
    fn bad_settings_name_their_key() {
        let e = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("retry.max_attempts"), "{e}");
        let e = RetryPolicy {
            multiplier: 0.5,
            ..RetryPolicy::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("retry.multiplier"), "{e}");
    }
}
