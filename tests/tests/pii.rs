//! Personal data never leaks, on the mock cluster: a driver id (the catalog's PII field of
//! `vehicle.state.v1`) quoted by failing operators and sinks is masked in the retry
//! warnings, the job-failure log and the error the job ends with, in the dead letters'
//! error headers, and in `dlq inspect` / `dlq export` unless `--show-pii`, whose use is
//! logged. Its own test binary: the redactor and the log capture are process-wide.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use eventbus_dlq::pii::PiiRedactor;
use eventbus_dlq::{DlqConfig, KafkaDeadLetters};
use eventbus_operators::{Retry, RetryPolicy};
use eventbus_runtime::{
    Ack, ErrorClass, Job, KafkaProperties, KafkaSource, ProcessError, Record, Sink, SinkError,
    SourceConfig,
};
use eventbus_schemas::codec::Decoder;
use eventbus_schemas::events::VehicleState;
use eventbus_schemas::{FileRegistry, SchemaRegistry};
use eventbus_tests::dlq::{eventbus, read_letters};
use eventbus_tests::{produce_and_read_back, unique, vehicle_state_schema};
use rdkafka::mocking::MockCluster;

const SECRET: &str = "drv-7f3a9c";

/// Everything logged, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A sink that refuses every vehicle state, quoting its driver: transiently while its
/// retries last, then permanently.
#[derive(Clone)]
struct RefusesDrivers;

impl Sink<VehicleState> for RefusesDrivers {
    async fn send(&self, record: Record<VehicleState>, ack: Ack) -> Result<(), SinkError> {
        let origin = ack.origin();
        ack.fail(SinkError::Delivery {
            sink: "refuses-drivers",
            origin,
            reason: format!(
                "driver {} is not allowed here (driver_id={})",
                record.value.driver_id.as_deref().unwrap_or("-"),
                record.value.driver_id.as_deref().unwrap_or("-")
            ),
            class: ErrorClass::Transient,
        });
        Ok(())
    }
}

fn with_secret_driver(n: usize) -> Vec<(String, Vec<u8>)> {
    let (id, schema) = vehicle_state_schema();
    let decoder = Decoder::new(Arc::new(FileRegistry::embedded().unwrap()));
    eventbus_tests::vehicle_states(3, id, n)
        .into_iter()
        .map(|(k, v)| {
            let mut e: VehicleState = decoder.decode_typed(&v, None).unwrap();
            e.driver_id = Some(SECRET.to_owned());
            (k, eventbus_schemas::encode(id, &schema, &e).unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_is_masked_in_logs_errors_letters_and_the_dlq_tools() {
    let logs = Captured::default();
    let sink_logs = logs.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || sink_logs.clone())
        .init();

    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let topic = "vehicle.state.v1";
    let dlq = format!("{topic}.dlq");
    cluster.create_topic(topic, 1, 1).expect("topic");
    cluster.create_topic(&dlq, 1, 1).expect("dlq topic");
    produce_and_read_back(
        &brokers,
        topic,
        with_secret_driver(3),
        Duration::from_secs(30),
    )
    .await;

    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", &brokers);
    let pii = HashMap::from([(topic.to_owned(), vec!["driver_id".to_owned()])]);
    let registry: Arc<dyn SchemaRegistry> = Arc::new(FileRegistry::embedded().unwrap());
    eventbus_runtime::redact::install(Arc::new(PiiRedactor::new(
        pii.clone(),
        registry.clone(),
        Some(kafka.clone()),
    )));
    let decode = {
        let decoder = Decoder::new(registry.clone());
        move |v: Bytes| decoder.decode_typed::<VehicleState>(&v, None)
    };

    // 1. Retries, then a job failure, both quoting the driver.
    let mut source = SourceConfig::new(unique("g"), [topic]);
    source.commit_interval_ms = 100;
    let policy = RetryPolicy {
        initial_delay_ms: 10,
        max_delay_ms: 20,
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    let job = Job::builder("pii")
        .source(KafkaSource::new(kafka.clone(), source))
        .try_map(decode.clone())
        .sink(Retry::new(RefusesDrivers, policy).unwrap())
        .build()
        .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(60), job.run(std::future::pending()))
        .await
        .expect("the job stops")
        .expect_err("the job fails");
    let error = error.to_string();
    assert!(error.contains("<redacted>"), "{error}");
    assert!(!error.contains(SECRET), "the job's error: {error}");
    let text = logs.text();
    assert!(
        text.contains("retrying"),
        "retry warnings were logged:\n{text}"
    );
    assert!(
        text.contains("job failed"),
        "the failure was logged:\n{text}"
    );

    // 2. A dead letter for a record refused by an operator quoting the driver.
    let mut source = SourceConfig::new(unique("g"), [topic]);
    source.commit_interval_ms = 100;
    let dlq_config = DlqConfig {
        pii: pii.clone(),
        ..DlqConfig::default()
    };
    let letters = KafkaDeadLetters::new(&kafka, dlq_config)
        .unwrap()
        .with_registry(registry.clone());
    let job = Job::builder("pii-dlq")
        .source(KafkaSource::new(kafka.clone(), source))
        .dead_letters(letters)
        .try_map(decode)
        .try_map(|e: VehicleState| {
            Err::<VehicleState, _>(ProcessError::permanent(format!(
                "driver {} is banned",
                e.driver_id.unwrap_or_default()
            )))
        })
        .sink(RefusesDrivers)
        .build()
        .unwrap();
    let running = eventbus_tests::Running::start(job);
    running.wait_committed(3, Duration::from_secs(60)).await;
    running.stop().await;
    let (b, d) = (brokers.clone(), dlq.clone());
    let stored = tokio::task::spawn_blocking(move || read_letters(&b, &d))
        .await
        .unwrap();
    assert_eq!(stored.len(), 3);
    for l in &stored {
        let message = l.context.message.clone().unwrap_or_default();
        assert_eq!(message, "driver <redacted> is banned");
        // The letter keeps the record itself, byte for byte: what replay sends back.
        assert!(String::from_utf8_lossy(&l.value).contains(SECRET));
    }

    // 3. The DLQ tools redact unless asked, and log when asked.
    for command in ["inspect", "export"] {
        let (ok, out, err) = eventbus(&["dlq", command, "--brokers", &brokers, "--topic", &dlq]);
        assert!(ok, "{err}");
        assert!(out.contains("<redacted>"), "dlq {command}:\n{out}");
        assert!(
            !out.contains(SECRET),
            "dlq {command} shows the driver:\n{out}"
        );
        let (ok, out, err) = eventbus(&[
            "dlq",
            command,
            "--brokers",
            &brokers,
            "--topic",
            &dlq,
            "--show-pii",
        ]);
        assert!(ok, "{err}");
        assert!(out.contains(SECRET), "dlq {command} --show-pii:\n{out}");
        assert!(err.contains("--show-pii"), "its use is logged:\n{err}");
    }
    // A redacted export cannot be imported: it no longer holds the record.
    let (_, exported, _) = eventbus(&["dlq", "export", "--brokers", &brokers, "--topic", &dlq]);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), exported).unwrap();
    let (ok, _, err) = eventbus(&[
        "dlq",
        "import",
        "--brokers",
        &brokers,
        "--dry-run",
        file.path().to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("redacted"), "{err}");

    // Nothing logged anywhere above names the driver.
    let text = logs.text();
    assert!(!text.contains(SECRET), "the logs name the driver:\n{text}");
}
