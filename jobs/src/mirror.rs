//! The `mirror` job: records from the source topics to one output topic, unchanged but
//! for three headers naming where each came from.
//!
//! It is the smallest complete job (source, a map, a sink) and so the model to copy:
//!
//! ```text
//! Job::builder("mirror")
//!     .source(KafkaSource::new(kafka, source))
//!     .map_record(stamp_source)
//!     .sink(KafkaSink::new(&kafka, sink)?)
//! ```

use bytes::Bytes;
use eventbus_operators::{KafkaSink, KafkaSinkConfig, Partitioning};
use eventbus_runtime::operator::Operator;
use eventbus_runtime::{Job, KafkaSource, Record, RunnableJob};
use serde::Deserialize;

use crate::config::JobFile;

/// Header naming the topic a mirrored record came from.
pub const HEADER_SOURCE_TOPIC: &str = "eventbus.source.topic";
/// Header naming the partition a mirrored record came from.
pub const HEADER_SOURCE_PARTITION: &str = "eventbus.source.partition";
/// Header naming the offset a mirrored record came from.
pub const HEADER_SOURCE_OFFSET: &str = "eventbus.source.offset";

/// The `[mirror]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The output topic. Required; it must exist.
    pub output: String,
    /// `"key"` (default): the producer partitions by key. `"source"`: each record goes
    /// to the partition number it came from, keeping every input partition's order in
    /// one output partition.
    #[serde(default)]
    pub partitioning: PartitioningSetting,
    /// Add the `eventbus.source.*` headers. Default true.
    #[serde(default = "yes")]
    pub stamp_source: bool,
}

fn yes() -> bool {
    true
}

/// The `partitioning` value of the `[mirror]` section.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PartitioningSetting {
    /// By key.
    #[default]
    Key,
    /// Same partition number as the source record.
    Source,
}

/// Builds the mirror job from a job file.
///
/// Blocks until the output topic is confirmed to exist (at most
/// `source.startup_timeout_ms`).
///
/// # Errors
/// A missing `[source]` or `[mirror]` section, a setting the runtime or the producer
/// refuses (the message names it), unreachable brokers, or a missing output topic.
pub fn job(
    file: &JobFile,
) -> anyhow::Result<RunnableJob<KafkaSource, impl Operator<Bytes, Out = Bytes>, KafkaSink>> {
    let source = file.source()?;
    let Some(mirror) = file.mirror.clone() else {
        anyhow::bail!("the config has no [mirror] section (output = \"topic\")");
    };
    let partitioning = match mirror.partitioning {
        PartitioningSetting::Key => Partitioning::Key,
        PartitioningSetting::Source => Partitioning::Source,
    };
    let sink = KafkaSink::new(
        &file.kafka,
        KafkaSinkConfig::new(mirror.output.clone()).partitioning(partitioning),
    )?;
    sink.check_topic(std::time::Duration::from_millis(source.startup_timeout_ms))?;
    let stamp = mirror.stamp_source;
    let job = Job::builder("mirror")
        .config(file.runtime.clone())
        .source(KafkaSource::new(file.kafka.clone(), source))
        .map_record(move |r: Record<Bytes>| if stamp { stamp_source(r) } else { r })
        .sink(sink)
        .build()?;
    Ok(job)
}

/// Adds the `eventbus.source.*` headers.
pub fn stamp_source(mut r: Record<Bytes>) -> Record<Bytes> {
    let (topic, partition, offset) = (r.topic.to_string(), r.partition, r.offset);
    r.headers.set(HEADER_SOURCE_TOPIC, topic);
    r.headers
        .set(HEADER_SOURCE_PARTITION, partition.to_string());
    r.headers.set(HEADER_SOURCE_OFFSET, offset.to_string());
    r
}

/// `eventbus run mirror`: the job from `file` until a signal.
///
/// # Errors
/// The job cannot start, or stops with an error.
pub async fn command(file: &JobFile) -> anyhow::Result<()> {
    let report = job(file)?
        .run(eventbus_runtime::shutdown::signals())
        .await
        .map_err(|e| anyhow::Error::new(e).context("mirror job stopped"))?;
    tracing::info!(
        consumed = report.consumed,
        delivered = report.delivered,
        committed = report.committed_total(),
        "mirror job finished"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_names_the_origin() {
        let r = stamp_source(Record::new(
            "vehicle.state.v1",
            4,
            17,
            Bytes::from_static(b"x"),
        ));
        assert_eq!(
            r.headers.get(HEADER_SOURCE_TOPIC),
            Some(&b"vehicle.state.v1"[..])
        );
        assert_eq!(r.headers.get(HEADER_SOURCE_PARTITION), Some(&b"4"[..]));
        assert_eq!(r.headers.get(HEADER_SOURCE_OFFSET), Some(&b"17"[..]));
    }

    #[test]
    fn the_section_is_required_and_checked() {
        let f =
            JobFile::parse("[source]\ngroup_id = \"g\"\ntopics = [\"a.b.v1\"]\n").expect("valid");
        let err = job(&f).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("[mirror]"), "{err}");
        let err = JobFile::parse("[mirror]\noutput = \"x\"\npartitioning = \"round-robin\"\n")
            .expect_err("bad value");
        assert!(format!("{err:#}").contains("round-robin"), "{err:#}");
    }
}
