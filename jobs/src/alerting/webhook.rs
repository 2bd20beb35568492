//! Webhooks: each `[[webhook]]` POSTs the alerts it takes as JSON, at most `rate_per_sec`
//! requests a second (retries included), retrying failures with backoff through the
//! operators' [`Retry`]. An alert that exhausts its retries goes to the alerts topic's
//! DLQ with the webhook, the rule and the triggering event in its headers.
//!
//! A 2xx answer delivers the alert. 408, 429 and 5xx answers, timeouts and refused
//! connections are retried; other 4xx answers are not (the request will not get better).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eventbus_operators::{Retry, RetryPolicy};
use eventbus_runtime::{
    Ack, DeadLetter, DeadLetterQueue, ErrorClass, Origin, Record, Sink, SinkError,
};
use eventbus_schemas::events::Alert;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use super::rules::Severity;

const NAME: &str = "webhook";

/// One `[[webhook]]` section. Its `Debug` output shows header names, never values.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// Where alerts are POSTed (`http://` or `https://`).
    pub url: String,
    /// The severities it takes. Default all.
    #[serde(default)]
    pub severities: Vec<Severity>,
    /// The rules it takes, by name. Default all.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Extra request headers, e.g. `Authorization`.
    #[serde(default)]
    pub headers: HashMap<String, String>,
    /// Extra request headers whose values are read from files (as container secrets
    /// are mounted): header name → file. A header here replaces one in `headers`.
    #[serde(default)]
    pub header_files: HashMap<String, String>,
    /// Requests per second to this URL, retries included. Default 10.
    #[serde(default = "default_rate")]
    pub rate_per_sec: u32,
    /// Bound on one request, connect included, ms. Default 5000.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// The retry schedule (`[webhook.retry]`, as `[retry]` elsewhere). Default: 10
    /// tries over at most 5 minutes.
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn default_rate() -> u32 {
    10
}

fn default_timeout() -> u64 {
    5_000
}

impl std::fmt::Debug for WebhookSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut headers: Vec<&String> = self.headers.keys().collect();
        headers.sort();
        f.debug_struct("WebhookSpec")
            .field("url", &self.shown_url())
            .field("severities", &self.severities)
            .field("rules", &self.rules)
            .field("headers", &headers)
            .field("header_files", &self.header_files)
            .field("rate_per_sec", &self.rate_per_sec)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

impl WebhookSpec {
    /// This spec with the `header_files` read into `headers`.
    fn with_header_files(&self, name: &str) -> Result<Self, String> {
        let mut spec = self.clone();
        for (header, path) in &self.header_files {
            let value =
                eventbus_runtime::read_secret_file(&format!("{name}: header_files.{header}"), path)
                    .map_err(|e| e.to_string())?;
            spec.headers.insert(header.clone(), value);
        }
        Ok(spec)
    }

    /// The URL without credentials, for logs and headers.
    pub fn shown_url(&self) -> String {
        match (self.url.find("://"), self.url.find('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &self.url[..scheme], &self.url[at + 1..])
            }
            _ => self.url.clone(),
        }
    }

    fn takes(&self, alert: &Alert) -> bool {
        let severity = match alert.severity {
            eventbus_schemas::events::AlertSeverity::Info => Severity::Info,
            eventbus_schemas::events::AlertSeverity::Warning => Severity::Warning,
            eventbus_schemas::events::AlertSeverity::Critical => Severity::Critical,
        };
        (self.severities.is_empty() || self.severities.contains(&severity))
            && (self.rules.is_empty() || self.rules.contains(&alert.rule))
    }

    fn check(&self, index: usize) -> Result<(), String> {
        let name = format!("webhook #{} ({})", index + 1, self.shown_url());
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("{name}: url must start with http:// or https://"));
        }
        if self.rate_per_sec == 0 {
            return Err(format!("{name}: rate_per_sec must be at least 1"));
        }
        self.retry.validate().map_err(|e| format!("{name}: {e}"))
    }
}

/// POSTs one alert's JSON per send; the ack says how it went.
#[derive(Clone)]
struct Post {
    spec: Arc<WebhookSpec>,
    agent: ureq::Agent,
    limiter: Arc<DefaultDirectRateLimiter>,
    /// Tries so far per alert id, for the letters of those that run out.
    tries: Arc<std::sync::Mutex<HashMap<String, u32>>>,
}

impl Post {
    /// How many times `alert_id` was tried; forgets it.
    fn tries(&self, alert_id: &str) -> u32 {
        self.tries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(alert_id)
            .unwrap_or(0)
    }
}

const ALERT_ID: &str = "eventbus.alert.id";

impl Sink<Bytes> for Post {
    async fn send(&self, record: Record<Bytes>, ack: Ack) -> Result<(), SinkError> {
        self.limiter.until_ready().await;
        if let Some(id) = record.headers.get(ALERT_ID) {
            let id = String::from_utf8_lossy(id).into_owned();
            *self
                .tries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id)
                .or_default() += 1;
        }
        let (spec, agent, body) = (self.spec.clone(), self.agent.clone(), record.value);
        let result = tokio::task::spawn_blocking(move || {
            let mut request = agent
                .post(&spec.url)
                .header("Content-Type", "application/json");
            for (k, v) in &spec.headers {
                request = request.header(k.as_str(), v.as_str());
            }
            match request.send(&body[..]) {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match status {
                        200..=299 => Ok(()),
                        408 | 429 | 500..=599 => {
                            Err((ErrorClass::Transient, format!("HTTP {status}")))
                        }
                        _ => Err((ErrorClass::Permanent, format!("HTTP {status}"))),
                    }
                }
                Err(e) => Err((ErrorClass::Transient, e.to_string())),
            }
        })
        .await
        .unwrap_or_else(|e| Err((ErrorClass::Transient, format!("request task failed: {e}"))));
        match result {
            Ok(()) => ack.done(),
            Err((class, reason)) => {
                let origin = ack.origin();
                ack.fail(SinkError::Delivery {
                    sink: NAME,
                    origin,
                    reason: format!("POST {}: {reason}", self.spec.shown_url()),
                    class,
                });
            }
        }
        Ok(())
    }
}

/// Every webhook, and where alerts that exhaust their retries go.
#[derive(Clone, Default)]
pub struct Webhooks {
    hooks: Vec<Hook>,
    letters: Option<Letters>,
}

#[derive(Clone)]
struct Hook {
    spec: Arc<WebhookSpec>,
    post: Post,
    retry: Retry<Post>,
}

/// The DLQ of the alerts topic.
#[derive(Clone)]
struct Letters {
    queue: Arc<dyn DeadLetterQueue>,
    alerts_topic: String,
    schema: (u32, Arc<apache_avro::Schema>),
    job: String,
}

impl Webhooks {
    /// The webhooks of `specs`; alerts that exhaust their retries go to `queue` as
    /// records of `alerts_topic` (Avro `Alert`, encoded with `schema`).
    ///
    /// # Errors
    /// A setting out of range, naming the webhook.
    pub fn new(
        specs: &[WebhookSpec],
        queue: Option<Arc<dyn DeadLetterQueue>>,
        alerts_topic: &str,
        schema: (u32, Arc<apache_avro::Schema>),
    ) -> Result<Self, String> {
        let mut hooks = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            spec.check(i)?;
            let spec = Arc::new(spec.with_header_files(&format!(
                "webhook #{} ({})",
                i + 1,
                spec.shown_url()
            ))?);
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_millis(spec.timeout_ms.max(1))))
                .http_status_as_error(false)
                .build()
                .into();
            let rate = NonZeroU32::new(spec.rate_per_sec).unwrap_or(NonZeroU32::MIN);
            let limiter = Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(NonZeroU32::MIN),
            ));
            let post = Post {
                spec: spec.clone(),
                agent,
                limiter,
                tries: Arc::default(),
            };
            let retry = Retry::new(post.clone(), spec.retry.clone()).map_err(|e| e.to_string())?;
            hooks.push(Hook { spec, post, retry });
        }
        Ok(Self {
            hooks,
            letters: queue.map(|queue| Letters {
                queue,
                alerts_topic: alerts_topic.to_owned(),
                schema,
                job: "alerting".to_owned(),
            }),
        })
    }

    /// POSTs `alert` to every webhook that takes it, retrying; an alert a webhook never
    /// took goes to the DLQ. Done once each webhook has it or its letter is durable.
    ///
    /// # Errors
    /// A letter could not be written (or there is no DLQ): the job must stop.
    pub async fn deliver(&self, alert: &Alert, origin: &Origin) -> Result<(), SinkError> {
        let body = match serde_json::to_vec(alert) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                return Err(SinkError::Delivery {
                    sink: NAME,
                    origin: origin.clone(),
                    reason: format!("cannot write alert {} as JSON: {e}", alert.alert_id),
                    class: ErrorClass::Fatal,
                });
            }
        };
        let tasks: Vec<_> = self
            .hooks
            .iter()
            .filter(|hook| hook.spec.takes(alert))
            .map(|hook| {
                let (me, hook, body) = (self.clone(), hook.clone(), body.clone());
                let (alert, origin) = (alert.clone(), origin.clone());
                tokio::spawn(async move {
                    let mut record =
                        Record::new(origin.topic.clone(), origin.partition, origin.offset, body);
                    record.key = Some(Bytes::from(alert.vehicle_id.clone().into_bytes()));
                    record.headers.set(ALERT_ID, alert.alert_id.clone());
                    let (ack, outcome) = Ack::channel(origin.clone());
                    hook.retry.send(record, ack).await?;
                    let result = match outcome.await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => {
                            let tries = hook.post.tries(&alert.alert_id);
                            me.dead_letter(&hook.spec, &alert, &origin, e, tries).await
                        }
                        Err(_) => Err(SinkError::AckDropped {
                            origin: origin.clone(),
                        }),
                    };
                    hook.post.tries(&alert.alert_id);
                    result
                })
            })
            .collect();
        for task in tasks {
            task.await.map_err(|e| SinkError::Delivery {
                sink: NAME,
                origin: origin.clone(),
                reason: format!("webhook task failed: {e}"),
                class: ErrorClass::Fatal,
            })??;
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        spec: &WebhookSpec,
        alert: &Alert,
        origin: &Origin,
        error: SinkError,
        tries: u32,
    ) -> Result<(), SinkError> {
        let Some(letters) = &self.letters else {
            return Err(error);
        };
        tracing::warn!(
            webhook = %spec.shown_url(), alert_id = %alert.alert_id, rule = %alert.rule,
            error = %error, "an alert exhausted its webhook retries; it goes to the DLQ"
        );
        let value = super::sink::encode_alert(&letters.schema, alert, origin, NAME)?;
        let mut record = Record::new(letters.alerts_topic.as_str(), -1, -1, Bytes::from(value));
        record.key = Some(Bytes::from(alert.vehicle_id.clone().into_bytes()));
        record.timestamp = Some(alert.raised_at);
        record.headers.set("eventbus.webhook.url", spec.shown_url());
        record
            .headers
            .set("eventbus.alert.id", alert.alert_id.clone());
        record
            .headers
            .set("eventbus.alert.rule", alert.rule.clone());
        record
            .headers
            .set("eventbus.alert.source", origin.to_string());
        let (reason, class) = match &error {
            SinkError::Delivery { reason, class, .. } => (reason.clone(), *class),
            other => (other.to_string(), ErrorClass::Transient),
        };
        let letter = DeadLetter {
            record,
            class: if class == ErrorClass::Fatal {
                ErrorClass::Transient
            } else {
                class
            },
            stage: format!("sink:{NAME}"),
            error_type: "eventbus_jobs::alerting::webhook::Refused".to_owned(),
            message: reason,
            attempts: tries.max(1),
            first_failure_ms: eventbus_runtime::dead_letter::now_ms(),
            job: letters.job.clone(),
            group: None,
        };
        let (ack, outcome) = Ack::channel(origin.clone());
        letters.queue.send(letter, ack).await;
        match outcome.await {
            Ok(result) => result,
            Err(_) => Err(SinkError::AckDropped {
                origin: origin.clone(),
            }),
        }
    }
}
