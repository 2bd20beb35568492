//! Header keys that are not UTF-8, as producers in other languages may send them, on the
//! mock cluster: the record is processed like any other, and its headers reach the Kafka
//! sink's output and the dead letter byte for byte.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use eventbus_dlq::{DlqConfig, KafkaDeadLetters};
use eventbus_jobs::topic_io;
use eventbus_operators::{KafkaSink, KafkaSinkConfig};
use eventbus_runtime::kafka::headers;
use eventbus_runtime::{
    ErrorClass, Headers, Job, KafkaProperties, KafkaSource, ProcessError, SourceConfig,
};
use eventbus_tests::dlq::Invalid;
use eventbus_tests::{Running, unique};
use rdkafka::ClientConfig;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const KEY: &[u8] = b"\xff\xfetrace\x80";
const VALUE: &[u8] = b"\x00\xc3(";

/// The headers every input record carries: one whose key is not UTF-8, a plain one, and a
/// null one.
fn raw_headers() -> Vec<(&'static [u8], Option<&'static [u8]>)> {
    vec![
        (KEY, Some(VALUE)),
        (b"plain", Some(b"p")),
        (b"\xc0null", None),
    ]
}

/// 64 headers: their count, zigzag-encoded, is the varint `80 01`.
fn many_headers() -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..64)
        .map(|i| (format!("h{i}").into_bytes(), vec![i as u8]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_that_is_not_utf8_is_processed_and_kept_byte_for_byte() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("g"));
    for t in [&input, &output, &dlq] {
        cluster.create_topic(t, 1, 1).expect("topic");
    }

    // A raw librdkafka producer: the header keys go through rd_kafka_header_add as bytes.
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    // Between them, a record with no headers and one with 64, whose count's first
    // varint byte has no value bits (what the consumer's header probe reads).
    for value in ["good-0", "bare", "poison", "many", "good-1"] {
        let record = BaseRecord::<[u8], [u8]>::to(&input)
            .key(b"k".as_slice())
            .payload(value.as_bytes());
        let record = match value {
            "bare" => record,
            "many" => record.headers(headers::to_owned(
                many_headers()
                    .iter()
                    .map(|(k, v)| (k.as_slice(), Some(v.as_slice()))),
            )),
            _ => record.headers(headers::to_owned(raw_headers().into_iter())),
        };
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");

    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", &brokers);
    let mut source = SourceConfig::new(group.clone(), [input.as_str()]);
    source.commit_interval_ms = 100;
    let mut dlq_config = DlqConfig::default();
    dlq_config.topics.insert(input.clone(), dlq.clone());
    let letters = KafkaDeadLetters::new(&kafka, dlq_config).expect("dead letters");
    let sink = KafkaSink::new(&kafka, KafkaSinkConfig::new(output.clone())).expect("sink");
    let job = Job::builder("headers")
        .source(KafkaSource::new(kafka, source))
        .dead_letters(letters)
        .try_map(|v: Bytes| {
            if &v[..] == b"poison" {
                Err(ProcessError::new(
                    ErrorClass::Permanent,
                    Invalid("poison".to_owned()),
                ))
            } else {
                Ok(v)
            }
        })
        .sink(sink)
        .build()
        .expect("job");
    let running = Running::start(job);
    running.wait_committed(5, Duration::from_secs(60)).await;
    let report = running.stop().await;
    assert_eq!((report.consumed, report.delivered), (5, 5), "{report:?}");

    let expected: Vec<(Vec<u8>, Option<Vec<u8>>)> = raw_headers()
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
        .collect();
    let read = |topic: &str| {
        topic_io::read_all(&brokers, topic, Duration::from_secs(30)).expect("read back")
    };
    let out = read(&output);
    let values: Vec<&[u8]> = out
        .iter()
        .map(|m| m.payload().unwrap_or_default())
        .collect();
    assert_eq!(values, vec![&b"good-0"[..], b"bare", b"many", b"good-1"]);
    for m in &out {
        let got = m
            .headers()
            .map(|h| Headers::from_kafka(h.as_borrowed()))
            .unwrap_or_default();
        let got: Vec<(Vec<u8>, Option<Vec<u8>>)> = got
            .iter()
            .map(|h| (h.key.to_vec(), h.value.as_ref().map(|v| v.to_vec())))
            .collect();
        let want = match m.payload() {
            Some(b"bare") => Vec::new(),
            Some(b"many") => many_headers()
                .into_iter()
                .map(|(k, v)| (k, Some(v)))
                .collect(),
            _ => expected.clone(),
        };
        assert_eq!(got, want, "the sink's output keeps the headers");
    }
    let letters = read(&dlq);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].payload(), Some(&b"poison"[..]));
    let got = letters[0]
        .headers()
        .map(|h| Headers::from_kafka(h.as_borrowed()))
        .unwrap_or_default();
    let original: Vec<(Vec<u8>, Option<Vec<u8>>)> = got
        .iter()
        .take(3)
        .map(|h| (h.key.to_vec(), h.value.as_ref().map(|v| v.to_vec())))
        .collect();
    assert_eq!(
        original, expected,
        "the letter starts with the original headers"
    );
    assert!(got.get("kafka_dlt-exception-message").is_some(), "{got:?}");
}
