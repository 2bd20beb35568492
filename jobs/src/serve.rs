//! The operations endpoint of a long-running job: Prometheus metrics and health probes
//! on one HTTP address (`--metrics-addr`, `[telemetry] metrics_addr` or
//! `EVENTBUS_METRICS_ADDR`; off unless set).
//!
//! - `GET /metrics`: every metric of the process in the Prometheus text format,
//!   rendered by `metrics-exporter-prometheus`;
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 once every job of the process has joined its group and started,
//!   503 while one has not, has failed, or has a partition stalled (records waiting and
//!   none done for `stall_after_ms`). The body says which job and partition.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;

/// The `[telemetry]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Where to serve `/metrics`, `/healthz` and `/readyz`, e.g. `0.0.0.0:9464`.
    pub metrics_addr: Option<String>,
    /// A partition with records waiting and none done for this long makes `/readyz`
    /// answer 503, ms. Default 60000.
    pub stall_after_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics_addr: None,
            stall_after_ms: 60_000,
        }
    }
}

/// Environment variable that sets the metrics address.
pub const ENV_METRICS_ADDR: &str = "EVENTBUS_METRICS_ADDR";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static ENABLED: AtomicBool = AtomicBool::new(true);

/// The Prometheus recorder behind a switch: when off, every metric call gets a no-op
/// handle, as with no recorder at all (the benchmark measures the difference).
struct Switch(metrics_exporter_prometheus::PrometheusRecorder);

impl metrics::Recorder for Switch {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key, unit, description);
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if ENABLED.load(Ordering::Relaxed) {
            self.0.register_counter(key, metadata)
        } else {
            Counter::noop()
        }
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        if ENABLED.load(Ordering::Relaxed) {
            self.0.register_gauge(key, metadata)
        } else {
            Gauge::noop()
        }
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if ENABLED.load(Ordering::Relaxed) {
            self.0.register_histogram(key, metadata)
        } else {
            Histogram::noop()
        }
    }
}

/// Switches recording on (the default once installed) or off.
pub fn set_recording(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Installs the process's Prometheus recorder (once) and returns its handle.
///
/// # Errors
/// Another recorder was installed first.
pub fn exporter() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    // Buckets, so histograms render as Prometheus histograms (histogram_quantile works
    // across instances) rather than per-process summaries.
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ])
        .context("histogram buckets")?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(Switch(recorder))
        .map_err(|e| anyhow::anyhow!("cannot install the Prometheus recorder: {e}"))?;
    // Histograms keep their samples until upkeep folds them into buckets.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Starts serving on `addr`; returns the address bound (useful with port 0).
///
/// # Errors
/// The address does not parse or cannot be bound.
pub async fn start(addr: &str, stall_after: Duration) -> anyhow::Result<SocketAddr> {
    let handle = exporter()?;
    let parsed: SocketAddr = addr.parse().with_context(|| {
        format!("metrics address {addr:?} is not HOST:PORT (e.g. 0.0.0.0:9464)")
    })?;
    let listener = tokio::net::TcpListener::bind(parsed)
        .await
        .with_context(|| format!("cannot listen on the metrics address {addr}"))?;
    let bound = listener.local_addr()?;
    let readiness = Arc::new(Mutex::new(eventbus_runtime::health::Readiness::new()));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (handle, readiness) = (handle.clone(), readiness.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let answer = answer(&req, &handle, &readiness, stall_after);
                    async move { Ok::<_, std::convert::Infallible>(answer) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    Ok(bound)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn answer(
    req: &Request<Incoming>,
    handle: &PrometheusHandle,
    readiness: &Mutex<eventbus_runtime::health::Readiness>,
    stall_after: Duration,
) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned());
    }
    match req.uri().path() {
        "/metrics" => {
            // Readiness as gauges too, for the alert rules.
            let jobs = eventbus_runtime::health::running();
            let result = readiness.lock().unwrap_or_else(|p| p.into_inner()).check(
                &jobs,
                Instant::now(),
                stall_after,
            );
            let stalled = result.as_ref().err().map_or(0, |p| {
                p.iter().filter(|l| l.contains(" is stalled")).count()
            });
            metrics::gauge!("eventbus_ready").set(if result.is_ok() { 1.0 } else { 0.0 });
            metrics::gauge!("eventbus_stalled_partitions").set(stalled as f64);
            let mut r = text(StatusCode::OK, handle.render());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => {
            let jobs = eventbus_runtime::health::running();
            let result = readiness.lock().unwrap_or_else(|p| p.into_inner()).check(
                &jobs,
                Instant::now(),
                stall_after,
            );
            match result {
                Ok(()) => text(StatusCode::OK, "ready\n".to_owned()),
                Err(problems) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready:\n{}\n", problems.join("\n")),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}
