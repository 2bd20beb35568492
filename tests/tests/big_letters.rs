//! Records too big to dead-letter as they are, on the mock cluster: a 1.5 MB record (more
//! than librdkafka's default `message.max.bytes`) that an operator refuses reaches the DLQ
//! whole; when the DLQ cannot take it (its producer limited below it), the letter is
//! written without its value, says the value's size, and the partition goes on. Either
//! way the job commits past the record and does not stop.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use eventbus_dlq::envelope::VALUE_OMITTED;
use eventbus_dlq::{DlqConfig, KafkaDeadLetters};
use eventbus_jobs::topic_io;
use eventbus_runtime::memory::CollectSink;
use eventbus_runtime::{
    ErrorClass, Headers, Job, KafkaProperties, KafkaSource, ProcessError, SourceConfig,
};
use eventbus_tests::dlq::Invalid;
use eventbus_tests::{Running, unique};
use rdkafka::ClientConfig;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const BIG: usize = 1_500_000;

/// Runs a job that refuses every record into its DLQ, over a big record and a small one,
/// with `extra` Kafka properties; returns the letters read back.
async fn letters_of_a_big_record(extra: &[(&str, &str)]) -> Vec<rdkafka::message::OwnedMessage> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let (input, dlq) = (unique("in"), unique("dlq"));
    for t in [&input, &dlq] {
        cluster.create_topic(t, 1, 1).expect("topic");
    }
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.max.bytes", "4000000")
        .create()
        .expect("producer");
    let big: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    for value in [big.as_slice(), b"small"] {
        producer
            .send(BaseRecord::<[u8], [u8]>::to(&input).payload(value))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");

    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", &brokers);
    for (k, v) in extra {
        kafka.set(*k, *v);
    }
    let mut source = SourceConfig::new(unique("g"), [input.as_str()]);
    source.commit_interval_ms = 100;
    let mut dlq_config = DlqConfig::default();
    dlq_config.topics.insert(input.clone(), dlq.clone());
    dlq_config.max_attempts = 2;
    dlq_config.retry_backoff_ms = 10;
    let letters = KafkaDeadLetters::new(&kafka, dlq_config).expect("dead letters");
    let job = Job::builder("big")
        .source(KafkaSource::new(kafka, source))
        .dead_letters(letters)
        .try_map(|_: Bytes| {
            Err::<Bytes, _>(ProcessError::new(
                ErrorClass::Permanent,
                Invalid("refused".to_owned()),
            ))
        })
        .sink(CollectSink::new())
        .build()
        .expect("job");
    let running = Running::start(job);
    running.wait_committed(2, Duration::from_secs(60)).await;
    let report = running.stop().await;
    assert_eq!(report.consumed, 2, "{report:?}");
    let letters =
        topic_io::read_all(&brokers, &dlq, Duration::from_secs(30)).expect("read the DLQ");
    assert_eq!(letters.len(), 2, "a letter for each record");
    // The big record's letter first (a letter written again without its value may come
    // after later ones).
    let mut letters = letters;
    letters.sort_by_key(|m| {
        headers_of(m)
            .get("kafka_dlt-original-offset")
            .map(<[u8]>::to_vec)
    });
    assert_eq!(letters[1].payload(), Some(&b"small"[..]));
    letters
}

fn headers_of(m: &rdkafka::message::OwnedMessage) -> Headers {
    m.headers()
        .map(|h| Headers::from_kafka(h.as_borrowed()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_a_megabyte_is_dead_lettered_whole() {
    let letters = letters_of_a_big_record(&[]).await;
    let value = letters[0].payload().expect("a value");
    assert_eq!(value.len(), BIG, "the letter holds the whole record");
    assert!(value.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    assert!(headers_of(&letters[0]).get(VALUE_OMITTED).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_the_dlq_cannot_take_is_written_without_its_value_and_the_job_goes_on() {
    // The producer's limit below the record: the letter cannot be written whole.
    let letters = letters_of_a_big_record(&[("message.max.bytes", "1000000")]).await;
    assert_eq!(letters[0].payload().unwrap_or_default().len(), 0);
    let headers = headers_of(&letters[0]);
    assert_eq!(
        headers.get(VALUE_OMITTED),
        Some(BIG.to_string().as_bytes()),
        "the letter says how big the value was"
    );
    // It still says where the record is.
    assert_eq!(
        headers.get("kafka_dlt-original-offset"),
        Some(&0i64.to_be_bytes()[..])
    );
}
