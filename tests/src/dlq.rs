//! The dead-letter scenarios, shared by the mock-cluster and the real-broker tests: a
//! VehicleState stream with poison of five kinds, a job that decodes, validates and
//! delivers it with a dead-letter queue, and what ended where.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventbus_dlq::{DlqConfig, KafkaDeadLetters, LetterContext};
use eventbus_jobs::topic_io;
use eventbus_runtime::memory::CollectSink;
use eventbus_runtime::{
    Ack, Classify, ErrorClass, Headers, Job, KafkaProperties, KafkaSource, Record, RuntimeError,
    Sink, SinkError, SourceConfig,
};
use eventbus_schemas::codec::Decoder;
use eventbus_schemas::events::VehicleState;
use eventbus_schemas::fleet::FleetGenerator;
use eventbus_schemas::{FileRegistry, encode};
use rdkafka::message::{Message, OwnedMessage};

/// The kinds of poison, in the order they are planted.
pub const KINDS: [&str; 5] = [
    "bad_bytes",
    "unknown_schema",
    "truncated",
    "validation",
    "sink_rejects",
];

/// The kinds that are not valid Avro of a registered schema: a decoding job (the
/// warehouse) cannot read them; the others decode and fail later, or not at all.
pub const UNDECODABLE: [&str; 3] = ["bad_bytes", "unknown_schema", "truncated"];

/// A produced stream: the records, and which kind of poison sits at which key.
pub struct PoisonStream {
    pub records: Vec<(String, Vec<u8>)>,
    /// Key (unique per record) → poison kind, for the poison records.
    pub poison: BTreeMap<String, &'static str>,
}

/// `n` VehicleState records; every `every`-th is poison, the kinds in turn. Keys are
/// unique (`<vehicle>#<i>`) so each record can be found again.
pub fn poison_stream(n: usize, every: usize) -> PoisonStream {
    let (id, schema) = crate::vehicle_state_schema();
    let mut records = Vec::with_capacity(n);
    let mut poison = BTreeMap::new();
    for (i, mut event) in FleetGenerator::new(50, 11).take(n).enumerate() {
        let key = format!("{}#{i}", event.vehicle_id);
        let kind = (i % every == every - 1).then(|| KINDS[(i / every) % KINDS.len()]);
        let value = match kind {
            None => encode(id, &schema, &event).expect("encode"),
            Some("bad_bytes") => b"{\"not\": \"avro\"}".to_vec(),
            Some("unknown_schema") => {
                let mut v = encode(id, &schema, &event).expect("encode");
                v[1..5].copy_from_slice(&999_999u32.to_be_bytes());
                v
            }
            Some("truncated") => {
                let v = encode(id, &schema, &event).expect("encode");
                v[..v.len() / 2].to_vec()
            }
            Some("validation") => {
                event.battery_pct = 180.0;
                encode(id, &schema, &event).expect("encode")
            }
            Some(_) => {
                event.fleet_id = REJECTED_FLEET.to_owned();
                encode(id, &schema, &event).expect("encode")
            }
        };
        if let Some(kind) = kind {
            poison.insert(key.clone(), kind);
        }
        records.push((key, value));
    }
    PoisonStream { records, poison }
}

/// The dead-letter settings of the tests: PII masking of `driver_id` on `topic`, and
/// the group named in the letters.
pub fn dlq_config(topic: &str) -> DlqConfig {
    let mut cfg = DlqConfig::default();
    cfg.pii
        .insert(topic.to_owned(), vec!["driver_id".to_owned()]);
    cfg.group = Some("dlq-test-group".to_owned());
    cfg
}

/// The fleet the test sink refuses, permanently.
pub const REJECTED_FLEET: &str = "fleet-rejected";

/// A validation failure.
#[derive(Debug)]
pub struct Invalid(pub String);

impl std::error::Error for Invalid {}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Classify for Invalid {
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// Decodes and validates one value.
pub fn decode_and_validate(
    decoder: &Decoder<FileRegistry>,
    bytes: &[u8],
) -> Result<VehicleState, eventbus_runtime::ProcessError> {
    let event: VehicleState = decoder
        .decode_typed(bytes, None)
        .map_err(|e| eventbus_runtime::ProcessError::new(e.class(), e))?;
    if !(0.0..=100.0).contains(&event.battery_pct) {
        return Err(eventbus_runtime::ProcessError::new(
            ErrorClass::Permanent,
            Invalid(format!(
                "battery_pct {} is outside 0..=100 (driver_id={})",
                event.battery_pct,
                event.driver_id.as_deref().unwrap_or("-")
            )),
        ));
    }
    Ok(event)
}

/// Collects events, refusing those of [`REJECTED_FLEET`] permanently, and failing every
/// record transiently while `down` is set.
#[derive(Clone)]
pub struct TestSink {
    pub collected: CollectSink<VehicleState>,
    pub down: Arc<AtomicBool>,
    /// When set, only this partition's records are refused while `down` holds.
    pub only_partition: Option<i32>,
    pub refused_while_down: Arc<std::sync::atomic::AtomicU64>,
}

impl TestSink {
    pub fn new() -> Self {
        Self {
            collected: CollectSink::new(),
            down: Arc::new(AtomicBool::new(false)),
            only_partition: None,
            refused_while_down: Arc::default(),
        }
    }

    /// Down from now until `outage` after its first refusal (on a task of the current
    /// runtime).
    pub fn down_for(&self, outage: Duration) {
        self.down.store(true, Ordering::Relaxed);
        let (down, refused) = (self.down.clone(), self.refused_while_down.clone());
        tokio::spawn(async move {
            while refused.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(outage).await;
            down.store(false, Ordering::Relaxed);
        });
    }
}

impl Default for TestSink {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink<VehicleState> for TestSink {
    async fn send(&self, record: Record<VehicleState>, ack: Ack) -> Result<(), SinkError> {
        let origin = record.origin();
        if self.down.load(Ordering::Relaxed)
            && self.only_partition.is_none_or(|p| p == record.partition)
        {
            self.refused_while_down.fetch_add(1, Ordering::Relaxed);
            ack.fail(SinkError::Delivery {
                sink: "test",
                origin,
                reason: "downstream unavailable".into(),
                class: ErrorClass::Transient,
            });
            return Ok(());
        }
        if record.value.fleet_id == REJECTED_FLEET {
            ack.fail(SinkError::Delivery {
                sink: "test",
                origin,
                reason: format!("fleet {REJECTED_FLEET} is not accepted"),
                class: ErrorClass::Permanent,
            });
            return Ok(());
        }
        self.collected.send(record, ack).await
    }
}

/// Where a dead-letter run ended.
pub struct DlqRun {
    pub result: Result<eventbus_runtime::JobReport, RuntimeError>,
    pub elapsed: Duration,
}

/// Settings of [`run_job`].
pub struct JobSetup<'a> {
    pub brokers: &'a str,
    pub group: &'a str,
    pub topic: &'a str,
    pub dlq: DlqConfig,
    pub retry: Option<eventbus_operators::RetryPolicy>,
    pub sink: TestSink,
    /// Extra librdkafka properties (for the dead-letter producer too).
    pub kafka: Vec<(&'a str, &'a str)>,
    /// Stop once the group committed this many records in all.
    pub until_committed: i64,
    pub timeout: Duration,
}

/// Runs the decode → validate → sink job with a Kafka dead-letter queue until the group
/// has committed `until_committed` records, the job fails, or the timeout passes.
pub async fn run_job(setup: JobSetup<'_>) -> DlqRun {
    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", setup.brokers);
    for &(k, v) in &setup.kafka {
        kafka.set(k, v);
    }
    let mut source = SourceConfig::new(setup.group, [setup.topic]);
    source.commit_interval_ms = 100;
    let letters = KafkaDeadLetters::new(&kafka, setup.dlq).expect("dead letters");
    let decoder = Decoder::new(FileRegistry::embedded().expect("registry"));
    let chain = Job::builder("dlq-test")
        .source(KafkaSource::new(kafka, source))
        .dead_letters(letters)
        .try_map(move |b: Bytes| decode_and_validate(&decoder, &b));
    let started = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let until = setup.until_committed;
    let timeout = setup.timeout;
    let result = match setup.retry {
        Some(policy) => {
            let job = chain
                .sink(eventbus_operators::Retry::new(setup.sink, policy).expect("policy"))
                .build()
                .expect("job");
            watch(job.stats(), until, timeout, tx);
            job.run(async move {
                let _ = rx.await;
            })
            .await
        }
        None => {
            let job = chain.sink(setup.sink).build().expect("job");
            watch(job.stats(), until, timeout, tx);
            job.run(async move {
                let _ = rx.await;
            })
            .await
        }
    };
    DlqRun {
        result,
        elapsed: started.elapsed(),
    }
}

fn watch(
    stats: Arc<eventbus_runtime::JobStats>,
    until: i64,
    timeout: Duration,
    stop: tokio::sync::oneshot::Sender<()>,
) {
    tokio::spawn(async move {
        let deadline = Instant::now() + timeout;
        while stats.committed().values().sum::<i64>() < until && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = stop.send(());
    });
}

/// One letter as read back from its DLQ topic.
pub struct Letter {
    pub key: String,
    pub value: Vec<u8>,
    pub timestamp: Option<i64>,
    pub context: LetterContext,
}

/// Reads every letter of a DLQ topic.
pub fn read_letters(brokers: &str, dlq: &str) -> Vec<Letter> {
    let messages = topic_io::read_all(brokers, dlq, Duration::from_secs(60)).expect("read DLQ");
    messages.iter().map(letter_of).collect()
}

fn letter_of(m: &OwnedMessage) -> Letter {
    let headers = m
        .headers()
        .map(|hs| Headers::from_kafka(hs.as_borrowed()))
        .unwrap_or_default();
    Letter {
        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
        value: m.payload().unwrap_or_default().to_vec(),
        timestamp: m.timestamp().to_millis(),
        context: LetterContext::from_headers(&headers),
    }
}

/// Checks a finished poison run: every poison record is in the DLQ exactly once with the
/// right context; every good record reached the sink exactly once.
pub fn check_poison_outcome(
    stream: &PoisonStream,
    topic: &str,
    letters: &[Letter],
    delivered: &[Record<VehicleState>],
) {
    let by_key: BTreeMap<&str, usize> = stream
        .records
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.as_str(), i))
        .collect();
    let mut seen = BTreeMap::new();
    for l in letters {
        *seen.entry(l.key.clone()).or_insert(0) += 1;
        let kind = stream
            .poison
            .get(&l.key)
            .unwrap_or_else(|| panic!("a good record was dead-lettered: {}", l.key));
        let i = by_key[l.key.as_str()];
        assert_eq!(
            l.value, stream.records[i].1,
            "letter {} keeps the value",
            l.key
        );
        let c = &l.context;
        assert_eq!(c.topic.as_deref(), Some(topic));
        assert!(c.partition.is_some() && c.offset.is_some(), "{}", l.key);
        assert_eq!(c.class.as_deref(), Some("permanent"), "{}: {c:?}", l.key);
        assert_eq!(c.attempts, Some(1));
        assert_eq!(c.job.as_deref(), Some("dlq-test"));
        let stage = c.stage.as_deref().unwrap_or_default();
        let message = c.message.as_deref().unwrap_or_default();
        match *kind {
            "sink_rejects" => assert_eq!(stage, "sink:test", "{c:?}"),
            "validation" => {
                assert_eq!(stage, "operator");
                assert!(message.contains("battery_pct"), "{message}");
                assert!(!message.contains("drv-"), "PII in the message: {message}");
            }
            "unknown_schema" => assert!(message.contains("999999"), "{message}"),
            _ => assert_eq!(stage, "operator"),
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "letters written more than once: {twice:?}"
    );
    let missing: Vec<_> = stream
        .poison
        .keys()
        .filter(|k| !seen.contains_key(*k))
        .collect();
    assert!(missing.is_empty(), "poison not in the DLQ: {missing:?}");
    let good = stream.records.len() - stream.poison.len();
    let mut offsets: Vec<(i32, i64)> = delivered.iter().map(|r| (r.partition, r.offset)).collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(
        offsets.len(),
        delivered.len(),
        "a good record was delivered twice"
    );
    assert_eq!(delivered.len(), good, "every good record reaches the sink");
    for r in delivered {
        assert!(r.value.fleet_id != REJECTED_FLEET);
    }
}

/// Runs `eventbus <args>` and returns (success, stdout, stderr).
pub fn eventbus(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(crate::eventbus_bin())
        .args(args)
        .output()
        .expect("run eventbus");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The mock cluster, when the test runs on one (it has no admin API).
pub type Mock<'a> =
    Option<&'a rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>>;

/// Creates topics on the mock cluster or, without one, through the admin API.
pub async fn create_topics(mock: Mock<'_>, brokers: &str, topics: &[(&str, i32)]) {
    match mock {
        Some(cluster) => {
            for (t, p) in topics {
                cluster.create_topic(t, *p, 1).expect("create topic");
            }
        }
        None => topic_io::create_topics(brokers, topics)
            .await
            .expect("create topics"),
    }
}

/// A DLQ filled by the poison job: `n` records, every `every`-th poison.
pub async fn filled_dlq(
    mock: Mock<'_>,
    brokers: &str,
    partitions: i32,
    n: usize,
    every: usize,
) -> (String, PoisonStream) {
    let topic = crate::unique("vehicle.state");
    let dlq = format!("{topic}.dlq");
    create_topics(mock, brokers, &[(&topic, partitions), (&dlq, partitions)]).await;
    let stream = poison_stream(n, every);
    topic_io::produce(brokers, &topic, stream.records.clone(), |_| {}).expect("produce");
    let cfg = dlq_config(&topic);
    let run = run_job(JobSetup {
        brokers,
        group: &crate::unique("g"),
        topic: &topic,
        dlq: cfg,
        retry: None,
        sink: TestSink::new(),
        kafka: vec![],
        until_committed: i64::try_from(n).expect("n"),
        timeout: Duration::from_secs(120),
    })
    .await;
    run.result.expect("the poison job ends cleanly");
    (topic, stream)
}

/// Every record of `topic` with its headers.
pub fn read_records(brokers: &str, topic: &str) -> Vec<(String, Vec<u8>, Headers, Option<i64>)> {
    topic_io::read_all(brokers, topic, Duration::from_secs(60))
        .expect("read")
        .iter()
        .map(|m| {
            let headers = m
                .headers()
                .map(|hs| Headers::from_kafka(hs.as_borrowed()))
                .unwrap_or_default();
            (
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().unwrap_or_default().to_vec(),
                headers,
                m.timestamp().to_millis(),
            )
        })
        .collect()
}
