//! The byte bound on in-flight records, measured as resident memory on the mock cluster.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use eventbus_jobs::topic_io;
use eventbus_runtime::{Job, KafkaProperties, KafkaSource, RuntimeConfig, SourceConfig};
use eventbus_tests::{GateSink, Running, unique};
use rdkafka::mocking::MockCluster;

const MIB: u64 = 1 << 20;

/// The process's resident set, from /proc, after handing the allocator's free memory
/// back to the system: producing the backlog freed as much as it sent, and a figure that
/// counted those free pages would hide what the job takes in.
fn rss() -> u64 {
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// A backlog of 100 KB messages, far larger than the bound, behind a sink that holds
/// every ack: the job takes in what the byte bound allows, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_large_messages_keeps_resident_memory_under_the_byte_bound() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let (input, group) = (unique("big"), unique("group"));
    // The mock cluster keeps 5 MB per partition: 40 partitions hold a 200 MB backlog.
    cluster.create_topic(&input, 40, 1).expect("topic");
    let records = (0..2_000u64).map(|i| (format!("k{i}"), vec![b'x'; 100_000]));
    topic_io::produce(&brokers, &input, records, |_| {}).expect("produce");
    let backlog = topic_io::available(&brokers, &input).expect("available");
    let backlog_bytes = backlog * 100_000;
    assert!(backlog_bytes > 150 * MIB, "only {backlog} records kept");

    let (bound, per_partition) = (16 * MIB, 2 * MIB);
    let prefetch = 16 * MIB;
    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", &brokers);
    kafka.set("queued.max.messages.kbytes", (prefetch / 1024).to_string());
    let mut source = SourceConfig::new(group, [input.as_str()]);
    source.commit_interval_ms = 100;
    let runtime = RuntimeConfig {
        max_in_flight_bytes_per_partition: per_partition as usize,
        max_in_flight_bytes: bound as usize,
        ..RuntimeConfig::default()
    };
    let sink = GateSink::default();
    let job = Job::builder("large-messages")
        .config(runtime)
        .source(KafkaSource::new(kafka, source))
        .sink(sink.clone())
        .build()
        .expect("job");
    let before = rss();
    let running = Running::start(job);
    let stats = running.stats.clone();

    // Wait until intake stops: nothing new for two seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (0, Instant::now());
    loop {
        assert!(Instant::now() < deadline, "intake never settled");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = stats.consumed();
        if now != last.0 {
            last = (now, Instant::now());
        } else if now > 0 && last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let grown = rss().saturating_sub(before);
    let taken = stats.consumed() * 100_000;
    // In flight: the bound plus one poll batch (capped at the per-partition bound);
    // beside it librdkafka's prefetch queue and a fixed overhead for buffers and tasks.
    // Without the byte bound the same run grows by about 195 MiB.
    let allowed = bound + per_partition + prefetch + 32 * MIB;
    eprintln!(
        "resident memory grew {} MiB with a {} MiB byte bound ({} MiB taken in, {} MiB \
         prefetch, backlog {} MiB)",
        grown / MIB,
        bound / MIB,
        taken / MIB,
        prefetch / MIB,
        backlog_bytes / MIB
    );
    assert!(
        taken <= bound + per_partition,
        "{} MiB taken in",
        taken / MIB
    );
    assert!(
        grown <= allowed,
        "resident memory grew {} MiB, more than {} MiB",
        grown / MIB,
        allowed / MIB
    );

    // Nothing is lost to the bound: once the sink answers, every record is committed
    // (up to the end offsets: the mock cluster dropped the oldest records of each
    // partition beyond its 5 MB).
    sink.open();
    let ends: i64 = topic_io::end_offsets(&brokers, &input)
        .expect("ends")
        .values()
        .sum();
    running.wait_committed(ends, Duration::from_secs(120)).await;
    let report = running.stop().await;
    assert_eq!(report.committed_total(), ends);
    assert_eq!(report.delivered, backlog);
}
