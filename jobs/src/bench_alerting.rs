//! `eventbus bench --job alerting`: latency from an event's produce time to its alert's
//! delivery acknowledgement, at a fixed input rate, against the floor measured in the
//! same run: a bare rdkafka consume → produce pipe over the same broker.
//!
//! The events are emergencies (each raises one CRITICAL alert, so every event is
//! measured). A producer sends them at `rate` per second, spread over each millisecond;
//! each event's produce time is its Kafka timestamp (CreateTime, milliseconds, set when
//! it is handed to the producer). The job's side records, per alert, the wall clock at
//! its delivery report minus that timestamp; the floor's side does the same per copied
//! record. Both use the job's low-latency client settings ([`crate::alerting::LINGER_MS`],
//! [`crate::alerting::FETCH_WAIT_MS`]) and an idempotent `acks=all` producer. Each side first runs
//! 2 s at the full rate unmeasured (warm-up: until then some partitions' fetchers are
//! still starting). Timestamps are whole milliseconds taken by truncation, so each
//! figure reads up to 1 ms high, on both sides alike.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use serde::Serialize;

use crate::alerting::{AlertingArgs, AlertingConfig};
use crate::config::JobFile;
use crate::topic_io;

/// p99 on the mock cluster, at most (ms).
pub const MOCK_P99_MS: f64 = 10.0;
/// p99 over the floor's p99 on a real broker, at most (ms).
pub const BROKER_P99_OVER_FLOOR_MS: f64 = 2.0;

/// Latency figures of one side, ms.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Records measured.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The largest.
    pub max_ms: f64,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if ms.is_empty() {
                return f64::NAN;
            }
            let i = ((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1;
            ms[i]
        };
        Self {
            count: ms.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: ms.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// What the alerting bench measured.
#[derive(Debug, Clone, Serialize)]
pub struct AlertingBench {
    /// Events per second produced.
    pub rate: u64,
    /// Seconds of production per side.
    pub seconds: u64,
    /// `mock` or the brokers.
    pub broker: String,
    /// The alerting job.
    pub job: Latency,
    /// The bare consume → produce pipe.
    pub floor: Latency,
    /// The goal for this broker: the p99 the job must stay under, ms.
    pub goal_p99_ms: f64,
    /// Whether the job's p99 met it.
    pub met: bool,
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn client(brokers: &str) -> anyhow::Result<ClientConfig> {
    Ok(crate::bench_sides::kafka(brokers)?.client_config())
}

type Input = ThreadedProducer<rdkafka::producer::DefaultProducerContext>;

/// The producer of the events; one per side, warmed up with the side.
fn input_producer(brokers: &str) -> anyhow::Result<Arc<Input>> {
    Ok(Arc::new(
        client(brokers)?
            .set("linger.ms", crate::alerting::LINGER_MS)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .context("bench producer")?,
    ))
}

/// Produces `rate` events a second for `seconds` to `topic`; returns how many.
fn produce_at_rate(
    producer: &Input,
    topic: &str,
    events: &[(String, Vec<u8>)],
    rate: u64,
    seconds: u64,
) -> anyhow::Result<u64> {
    let total = rate * seconds;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let (key, value) = &events[usize::try_from(sent).unwrap_or(0) % events.len()];
            let record = BaseRecord::to(topic).key(key).payload(value);
            if let Err((e, _)) = producer.send(record) {
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                bail!("producing to {topic}: {e}");
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(sent)
}

/// Records the latency of each delivered copy.
struct Stamps(Arc<Mutex<Vec<f64>>>);

impl ClientContext for Stamps {}

impl ProducerContext for Stamps {
    type DeliveryOpaque = Box<i64>;

    fn delivery(&self, result: &DeliveryResult<'_>, produced: Box<i64>) {
        if result.is_ok() {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(now_ms() - *produced as f64);
        }
    }
}

/// Seconds of production at the full rate before each side is measured: every
/// partition's fetcher and the producer's connections are up by then.
const WARM_UP_S: u64 = 2;

/// The floor: a thread that consumes `input` and produces each record to `output`,
/// while events are produced: first a warm-up, then the measured run.
fn floor(
    brokers: &str,
    input: &str,
    output: &str,
    events: &[(String, Vec<u8>)],
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Vec<f64>> {
    let consumer: BaseConsumer = client(brokers)?
        .set("group.id", format!("bench-floor-{}", now_ms() as u64))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", crate::alerting::FETCH_WAIT_MS)
        .create()?;
    consumer.subscribe(&[input])?;
    let stamps = Arc::new(Mutex::new(Vec::new()));
    let producer: ThreadedProducer<Stamps> = client(brokers)?
        .set("linger.ms", crate::alerting::LINGER_MS)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create_with_context(Stamps(stamps.clone()))?;
    let joined = Instant::now();
    while consumer.assignment()?.count() == 0 {
        consumer.poll(Duration::from_millis(100));
        if joined.elapsed() > Duration::from_secs(30) {
            bail!("the floor's consumer got no partition within 30 s");
        }
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (flag, out) = (stop.clone(), output.to_owned());
    let pipe = std::thread::spawn(move || -> anyhow::Result<()> {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let Some(m) = consumer.poll(Duration::from_millis(10)) else {
                continue;
            };
            let m = m?;
            let ts = m.timestamp().to_millis().unwrap_or(0);
            let mut record = BaseRecord::with_opaque_to(&out, Box::new(ts))
                .payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            while let Err((e, back)) = producer.send(record) {
                if e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                    bail!("floor producing to {out}: {e}");
                }
                std::thread::sleep(Duration::from_millis(1));
                record = back;
            }
        }
        producer.flush(Duration::from_secs(30))?;
        Ok(())
    });
    let events_out = input_producer(brokers)?;
    produce_at_rate(&events_out, input, events, rate, WARM_UP_S)?;
    std::thread::sleep(Duration::from_millis(500));
    stamps.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let sent = produce_at_rate(&events_out, input, events, rate, seconds)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while (stamps.lock().unwrap_or_else(|p| p.into_inner()).len() as u64) < sent
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    pipe.join()
        .map_err(|_| anyhow::anyhow!("the floor's thread panicked"))??;
    let taken = std::mem::take(&mut *stamps.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(taken)
}

/// The job's side: runs the alerting job on `input` (as the emergency topic) into
/// `output` while events are produced.
async fn job(
    brokers: &str,
    input: &str,
    output: &str,
    events: &[(String, Vec<u8>)],
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Vec<f64>> {
    let mut file = JobFile {
        kafka: crate::bench_sides::kafka(brokers)?,
        ..JobFile::default()
    };
    file.source = Some(eventbus_runtime::SourceConfig::new(
        format!("bench-alerting-{}", now_ms() as u64),
        Vec::<String>::new(),
    ));
    let mut config = AlertingConfig {
        output: output.to_owned(),
        dead_letters: false,
        ..AlertingConfig::default()
    };
    config
        .topics
        .insert(config.emergency_topic.clone(), input.to_owned());
    file.alerting = Some(config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let args = AlertingArgs {
        record_latency: true,
        ..AlertingArgs::default()
    };
    let (f, a) = (file.clone(), args.clone());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let running = tokio::spawn(async move {
        crate::alerting::run_with(
            &f,
            &a,
            async move {
                let _ = stopped.await;
            },
            ready_tx,
        )
        .await
    });
    let alerting = ready_rx
        .await
        .context("the alerting job stopped before it started")?;
    let events_out = input_producer(brokers)?;
    // Warm up until an alert comes back: the group has joined and both ends are warm.
    let warm = Instant::now();
    loop {
        let (p, t, ev) = (events_out.clone(), input.to_owned(), events[..1].to_vec());
        tokio::task::spawn_blocking(move || produce_at_rate(&p, &t, &ev, 1, 1)).await??;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !alerting.take_latencies().is_empty() {
            break;
        }
        if warm.elapsed() > Duration::from_secs(60) {
            bail!("the alerting job raised nothing within 60 s");
        }
    }
    let (p, t, ev) = (events_out.clone(), input.to_owned(), events.to_vec());
    tokio::task::spawn_blocking(move || produce_at_rate(&p, &t, &ev, rate, WARM_UP_S)).await??;
    // The warm-up's stragglers are not measured.
    tokio::time::sleep(Duration::from_millis(500)).await;
    alerting.take_latencies();
    let (p, t, ev) = (events_out.clone(), input.to_owned(), events.to_vec());
    let sent =
        tokio::task::spawn_blocking(move || produce_at_rate(&p, &t, &ev, rate, seconds)).await??;
    let mut taken = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (taken.len() as u64) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        taken.extend(alerting.take_latencies());
    }
    let _ = stop.send(());
    running.await??;
    Ok(taken)
}

/// Runs `side` with the Prometheus exporter recording (and scraped every second, as a
/// busy Prometheus would) or not: `bench --job discard --exporter`.
///
/// # Errors
/// As `side`, or the exporter cannot be installed.
pub async fn with_exporter<T>(
    on: bool,
    side: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let handle = crate::serve::exporter()?;
    crate::serve::set_recording(on);
    let scraper = on.then(|| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                std::hint::black_box(handle.render());
            }
        })
    });
    let result = side.await;
    if let Some(s) = scraper {
        s.abort();
    }
    crate::serve::set_recording(true);
    result
}

/// Runs the alerting bench.
///
/// # Errors
/// The broker cannot be used, or a side does not finish.
pub async fn run(
    brokers: Option<&str>,
    partitions: i32,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<AlertingBench> {
    let id = now_ms() as u64;
    let (input, out, floor_in, floor_out) = (
        format!("bench.emergency.r{id}.v1"),
        format!("bench.alerts.r{id}.v1"),
        format!("bench.floor-in.r{id}.v1"),
        format!("bench.floor-out.r{id}.v1"),
    );
    let topics = [
        (input.as_str(), partitions),
        (out.as_str(), partitions),
        (floor_in.as_str(), partitions),
        (floor_out.as_str(), partitions),
    ];
    let (_cluster, brokers_used) = match brokers {
        Some(b) => {
            topic_io::create_topics(&crate::bench_sides::kafka(b)?, &topics).await?;
            (None, b.to_owned())
        }
        None => {
            let cluster = MockCluster::new(1).context("cannot start the mock cluster")?;
            for (t, p) in topics {
                cluster.create_topic(t, p, 1)?;
            }
            let b = cluster.bootstrap_servers();
            (Some(cluster), b)
        }
    };
    let registry = eventbus_schemas::FileRegistry::embedded()?;
    let (sid, schema) = registry
        .latest_of("safety.emergency.v1-value")
        .context("the emergency schema is not registered")?;
    let events: Vec<(String, Vec<u8>)> =
        crate::generate::records("safety.emergency.v1", 7, sid, &schema)?
            .take(10_000)
            .collect::<anyhow::Result<_>>()?;
    let job_ms = job(&brokers_used, &input, &out, &events, rate, seconds).await?;
    let (b, i, o, ev) = (
        brokers_used.clone(),
        floor_in.clone(),
        floor_out.clone(),
        events.clone(),
    );
    let floor_ms =
        tokio::task::spawn_blocking(move || floor(&b, &i, &o, &ev, rate, seconds)).await??;
    let (job, floor) = (Latency::of(job_ms), Latency::of(floor_ms));
    let goal_p99_ms = match brokers {
        Some(_) => floor.p99_ms + BROKER_P99_OVER_FLOOR_MS,
        None => MOCK_P99_MS,
    };
    Ok(AlertingBench {
        rate,
        seconds,
        broker: brokers.map_or_else(|| "mock".to_owned(), str::to_owned),
        met: job.p99_ms <= goal_p99_ms,
        job,
        floor,
        goal_p99_ms,
    })
}

/// The result as a table.
pub fn render(r: &AlertingBench) -> String {
    let row = |name: &str, l: &Latency| {
        format!(
            "{name:<22} {:>9.2} {:>9.2} {:>9.2} {:>9}\n",
            l.p50_ms, l.p99_ms, l.max_ms, l.count
        )
    };
    format!(
        "alerting latency: {} events/s for {} s on {}\n\
         {:<22} {:>9} {:>9} {:>9} {:>9}\n{}{}\
         goal: p99 <= {:.2} ms ({}): {}\n",
        r.rate,
        r.seconds,
        r.broker,
        "produce -> delivered",
        "p50 ms",
        "p99 ms",
        "max ms",
        "records",
        row("alerting job", &r.job),
        row("bare consume->produce", &r.floor),
        r.goal_p99_ms,
        if r.broker == "mock" {
            "mock cluster"
        } else {
            "the floor's p99 + 2 ms"
        },
        if r.met { "met" } else { "NOT met" },
    )
}
