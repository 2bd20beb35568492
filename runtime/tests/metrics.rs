//! The executor reports through the `metrics` facade: records in and out per job and topic.
//! Its own test binary, because it installs the process-wide recorder.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use eventbus_runtime::memory::{CollectSink, MemorySource};
use eventbus_runtime::telemetry::{RECORDS_IN, RECORDS_OUT};
use eventbus_runtime::{Job, Record};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// Sums every counter by name and labels.
#[derive(Default)]
struct Sums {
    counters: Mutex<BTreeMap<String, Arc<Count>>>,
}

#[derive(Default)]
struct Count(AtomicU64);

impl metrics::CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

fn key_text(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for &'static Sums {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let c = self
            .counters
            .lock()
            .unwrap()
            .entry(key_text(key))
            .or_default()
            .clone();
        Counter::from_arc(c)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test]
async fn records_in_and_out_are_counted_per_topic() {
    let sums: &'static Sums = Box::leak(Box::default());
    metrics::set_global_recorder(sums).expect("first recorder");
    // Offsets with gaps, as compaction leaves them; each topic is its own partition.
    let records = (0..300).map(|i| Record::new(if i % 3 == 0 { "a" } else { "b" }, 0, i, i));
    Job::builder("m")
        .source(MemorySource::new(records))
        .filter(|r| r.value % 2 == 0)
        .sink(CollectSink::new())
        .build()
        .unwrap()
        .run(std::future::pending())
        .await
        .unwrap();
    let get = |k: &str| {
        sums.counters
            .lock()
            .unwrap()
            .get(k)
            .map_or(0, |c| c.0.load(Ordering::Relaxed))
    };
    assert_eq!(get(&format!("{RECORDS_IN}{{job=m,topic=a}}")), 100);
    assert_eq!(get(&format!("{RECORDS_IN}{{job=m,topic=b}}")), 200);
    // Out counts what the sink acknowledged: the even values.
    assert_eq!(get(&format!("{RECORDS_OUT}{{job=m,topic=a}}")), 50);
    assert_eq!(get(&format!("{RECORDS_OUT}{{job=m,topic=b}}")), 100);
}
