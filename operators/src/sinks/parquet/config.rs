//! The sink's settings: where the table lives, when files roll, and how schemas are
//! looked up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Looks a writer schema up by its registry id: the Avro schema JSON, `Ok(None)` when the
/// registry has no such id, `Err` when it could not answer.
pub type SchemaLookup = Arc<dyn Fn(u32) -> Result<Option<String>, String> + Send + Sync>;

/// A topic's partitions and their (low, high) offsets, from its metadata: what the
/// watermark counts. Blocking; called off the async workers.
pub type PartitionEnds =
    Arc<dyn Fn(&str) -> Result<std::collections::BTreeMap<i32, (i64, i64)>, String> + Send + Sync>;

/// Where and how the sink writes: the `[warehouse]` section of a job file, every key
/// optional (`max_age` is `max_age_ms` there, `event_time_fields` is `event_time`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Table root: a local path or `file:///path` (the default store), or
    /// `s3://bucket/prefix`. Default `data/warehouse`.
    pub table_root: String,
    /// Roll a partition's file at this many rows. Default 500,000. Keep it at or below
    /// the runtime's `max_in_flight_per_partition`: rows wait unacknowledged in the
    /// buffer, and a partition paused for being full would otherwise wait for the
    /// maximum age.
    pub roll_rows: usize,
    /// Publish every partition once all of them together hold this many rows. Default
    /// 1,000,000. Keep it below the runtime's `max_in_flight`, for the same reason (the
    /// warehouse job derives it from there; not read from a job file).
    #[serde(skip)]
    pub max_buffered_rows: usize,
    /// Roll at this many bytes of encoded input. Default 128 MiB.
    pub roll_bytes: usize,
    /// Publish whatever a partition holds once its oldest row is this old, even when no
    /// new record arrives. Default 60 s.
    #[serde(rename = "max_age_ms", deserialize_with = "millis")]
    pub max_age: Duration,
    /// Rows per Parquet row group. Default 128 Ki.
    pub row_group_rows: usize,
    /// zstd level. Default 1.
    pub zstd_level: i32,
    /// Per topic, the field giving each row's event time (a timestamp or a long of
    /// milliseconds) for the `dt=/hour=` folders; topics not listed use the Kafka
    /// timestamp.
    #[serde(rename = "event_time")]
    pub event_time_fields: HashMap<String, String>,
    /// S3 settings for `s3://` roots.
    pub s3: S3Config,
    /// Run on a store that does not honour conditional puts (create only if absent),
    /// which [`super::ParquetSink::check_store`] otherwise refuses. Commit entries are
    /// then written check-then-put, which is exact only while one writer at a time
    /// writes each partition: a consumer-group member that lost its session but still
    /// writes can publish the same rows as the partition's new owner. Default false.
    pub assume_single_writer: bool,
    /// A record that cannot be decoded goes to the job's dead-letter queue and its
    /// partition goes on. With false, such a record stops the job (a Fatal error), and
    /// nothing is committed past it. Default true.
    pub dead_letters: bool,
}

impl Default for ParquetSinkConfig {
    fn default() -> Self {
        Self::new(DEFAULT_TABLE_ROOT)
    }
}

/// The table root when none is given.
pub const DEFAULT_TABLE_ROOT: &str = "data/warehouse";

fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let ms = <u64 as serde::Deserialize>::deserialize(d)?;
    Ok(Duration::from_millis(ms.max(1)))
}

impl ParquetSinkConfig {
    /// Defaults for a table root.
    pub fn new(table_root: impl Into<String>) -> Self {
        Self {
            table_root: table_root.into(),
            roll_rows: 500_000,
            max_buffered_rows: 1_000_000,
            roll_bytes: 128 << 20,
            max_age: Duration::from_secs(60),
            row_group_rows: 128 * 1024,
            zstd_level: 1,
            event_time_fields: HashMap::new(),
            s3: S3Config::default(),
            assume_single_writer: false,
            dead_letters: true,
        }
    }
}

/// S3 settings. Unset values come from the usual AWS environment variables
/// (`AWS_ENDPOINT_URL` or `AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, ...). An `http://` endpoint is allowed without TLS. The
/// secret key never shows in this type's `Debug` output.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000` for a local server.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// A file holding the secret access key (as container secrets are mounted); it
    /// replaces `secret_access_key`.
    pub secret_access_key_file: Option<String>,
    /// PEM file of the certificate authorities an `https://` endpoint is checked
    /// against, added to the system's (for MinIO-style servers with a private CA).
    /// Default `AWS_CA_BUNDLE` when set.
    pub ca_file: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = self
            .secret_access_key
            .as_ref()
            .map(|_| eventbus_runtime::MASK);
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &secret)
            .field("secret_access_key_file", &self.secret_access_key_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}
