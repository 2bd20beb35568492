//! Metric names and log set-up, defined once.
//!
//! Metrics go through the `metrics` facade; installing an exporter is the binary's
//! business. Each helper below is the only place its metric name appears.

use std::str::FromStr;

/// Records read from Kafka, by topic.
pub const RECORDS_IN: &str = "eventbus_records_in_total";
/// Records acknowledged by the sink, by topic.
pub const RECORDS_OUT: &str = "eventbus_records_out_total";
/// Offset commits sent to the group coordinator (one per partition committed).
pub const COMMITS: &str = "eventbus_commits_total";
/// Records delivered to the executor and not yet committable, job-wide.
pub const IN_FLIGHT: &str = "eventbus_in_flight_records";
/// Partitions currently paused by backpressure.
pub const PAUSED_PARTITIONS: &str = "eventbus_paused_partitions";

/// Records in a partition past the group's committed offset: the high watermark minus
/// the committed offset (minus the low watermark when the group has committed none).
pub const CONSUMER_LAG: &str = "eventbus_consumer_lag_records";
/// The group's committed offset of a partition (the next offset to read).
pub const COMMITTED_OFFSET: &str = "eventbus_committed_offset";

pub(crate) fn lag(job: &str, topic: &str, partition: i32, lag: i64, committed: i64) {
    let labels = [
        ("job", job.to_owned()),
        ("topic", topic.to_owned()),
        ("partition", partition.to_string()),
    ];
    metrics::gauge!(CONSUMER_LAG, &labels).set(lag as f64);
    metrics::gauge!(COMMITTED_OFFSET, &labels).set(committed as f64);
}

/// Bytes of the records in flight, job-wide.
pub const IN_FLIGHT_BYTES: &str = "eventbus_in_flight_bytes";
/// Now minus the Kafka timestamp of a record when the commit point passes it, by job:
/// sampled once per partition and second, from the last record of a recent batch.
pub const END_TO_END: &str = "eventbus_end_to_end_latency_seconds";

pub(crate) fn end_to_end(job: &str, ms: i64) {
    metrics::histogram!(END_TO_END, "job" => job.to_owned()).record(ms.max(0) as f64 / 1000.0);
}

/// Records sent to a dead-letter queue, by job, topic, stage and class.
pub const DEAD_LETTERS: &str = "eventbus_dead_letters_total";

pub(crate) fn dead_lettered(letter: &crate::dead_letter::DeadLetter) {
    metrics::counter!(
        DEAD_LETTERS,
        "job" => letter.job.clone(),
        "topic" => letter.record.topic.to_string(),
        "stage" => letter.stage.clone(),
        "class" => letter.class.to_string(),
    )
    .increment(1);
}

/// How long an offset commit took, by job.
pub const COMMIT_DURATION: &str = "eventbus_commit_duration_seconds";
/// Rebalances seen, by job and kind (`assign`).
pub const REBALANCES: &str = "eventbus_rebalances_total";

pub(crate) fn commit_duration(job: &str, took: std::time::Duration) {
    metrics::histogram!(COMMIT_DURATION, "job" => job.to_owned()).record(took.as_secs_f64());
}

pub(crate) fn rebalance(job: &str, kind: &'static str) {
    metrics::counter!(REBALANCES, "job" => job.to_owned(), "kind" => kind).increment(1);
}

pub(crate) fn records_in(job: &str, topic: &str, n: u64) {
    metrics::counter!(RECORDS_IN, "job" => job.to_owned(), "topic" => topic.to_owned())
        .increment(n);
}

pub(crate) fn records_out(job: &str, topic: &str, n: u64) {
    metrics::counter!(RECORDS_OUT, "job" => job.to_owned(), "topic" => topic.to_owned())
        .increment(n);
}

pub(crate) fn commit(job: &str, partitions: usize) {
    metrics::counter!(COMMITS, "job" => job.to_owned()).increment(partitions as u64);
}

pub(crate) fn flow(job: &str, in_flight: usize, in_flight_bytes: usize, paused: usize) {
    metrics::gauge!(IN_FLIGHT, "job" => job.to_owned()).set(in_flight as f64);
    metrics::gauge!(IN_FLIGHT_BYTES, "job" => job.to_owned()).set(in_flight_bytes as f64);
    metrics::gauge!(PAUSED_PARTITIONS, "job" => job.to_owned()).set(paused as f64);
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format `{other}`: use pretty or json")),
        }
    }
}

/// Installs the global `tracing` subscriber, writing to stderr. The filter comes from
/// `RUST_LOG`, else `default_level` (with librdkafka's chatter at `warn` at most).
/// librdkafka's own log lines arrive through the `log` bridge. Calling it twice is
/// harmless.
pub fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{default_level},librdkafka=warn,rdkafka=warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
