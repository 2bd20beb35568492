//! The job file: one TOML file configures any job.
//!
//! ```toml
//! [kafka]                       # any librdkafka property, passed through
//! "bootstrap.servers" = "127.0.0.1:9092"
//! "session.timeout.ms" = 6000
//!
//! [source]                      # the consumer group and its topics
//! group_id = "mirror"
//! topics = ["vehicle.state.v1"]
//! commit_interval_ms = 5000     # default
//!
//! [runtime]                     # executor bounds (all optional)
//! max_in_flight_per_partition = 10000
//!
//! [mirror]                      # the mirror job's own section
//! output = "vehicle.state.mirror.v1"
//!
//! [dlq]                         # dead letters (all optional)
//! max_attempts = 5
//! topics = { "vehicle.state.v1" = "vehicle.state.v1.dlq" }
//! ```
//!
//! Precedence, lowest first: the file, the environment (`EVENTBUS_BROKERS`,
//! `EVENTBUS_GROUP_ID`, `EVENTBUS_KAFKA_*`), the command line (`--brokers`, `--group`).

use std::path::Path;

use anyhow::{Context, bail};
use eventbus_runtime::{KafkaProperties, RuntimeConfig, SourceConfig};
use serde::Deserialize;

use crate::mirror::MirrorConfig;

/// Environment variable that overrides `source.group_id`.
pub const ENV_GROUP_ID: &str = "EVENTBUS_GROUP_ID";

/// The whole job file. Unknown sections and keys are errors that name them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// librdkafka properties for the job's consumers and producers.
    #[serde(default)]
    pub kafka: KafkaProperties,
    /// The consumer group and topics.
    #[serde(default)]
    pub source: Option<SourceConfig>,
    /// Executor bounds.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Settings of the `mirror` job.
    #[serde(default)]
    pub mirror: Option<MirrorConfig>,
    /// Settings of the `warehouse` job.
    #[serde(default)]
    pub warehouse: Option<crate::warehouse::WarehouseConfig>,
    /// Settings of the `dlq-processor` job, and the category rules `eventbus dlq` uses.
    #[serde(default)]
    pub dlq_processor: Option<crate::dlq_processor::ProcessorConfig>,
    /// Where jobs that quarantine bad records write them (the warehouse job): DLQ topic
    /// per source topic (default the catalog's, else `<topic>.dlq`), PII fields, write
    /// attempts.
    #[serde(default)]
    pub dlq: Option<eventbus_dlq::DlqConfig>,
}

/// Overrides from the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--brokers`: replaces `bootstrap.servers`.
    pub brokers: Option<String>,
    /// `--group`: replaces `source.group_id`.
    pub group: Option<String>,
}

impl JobFile {
    /// Reads and parses a job file, then applies the environment and the overrides.
    ///
    /// # Errors
    /// The file cannot be read, or its TOML is invalid (the message names the key and
    /// line), or a value has the wrong type.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Self> {
        let mut file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the config file {}", p.display()))?;
                Self::parse(&text)
                    .with_context(|| format!("invalid config file {}", p.display()))?
            }
            None => Self::default(),
        };
        file.apply(std::env::vars(), overrides);
        Ok(file)
    }

    /// Parses a job file's text.
    ///
    /// # Errors
    /// Invalid TOML, an unknown key, or a value of the wrong type.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// Applies environment variables, then command-line overrides.
    pub fn apply(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        self.kafka.apply_env(vars.iter().cloned());
        let env_group = vars
            .iter()
            .find(|(k, _)| k == ENV_GROUP_ID)
            .map(|(_, v)| v.clone());
        if let Some(b) = &overrides.brokers {
            self.kafka.set("bootstrap.servers", b.clone());
        }
        if let Some(group) = overrides.group.clone().or(env_group)
            && let Some(src) = &mut self.source
        {
            src.group_id = group;
        }
    }

    /// The `[source]` section, required by every Kafka job.
    ///
    /// # Errors
    /// When the section is missing.
    pub fn source(&self) -> anyhow::Result<SourceConfig> {
        match &self.source {
            Some(s) => Ok(s.clone()),
            None => bail!("the config has no [source] section (group_id, topics)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [kafka]
        "bootstrap.servers" = "file:9092"
        [source]
        group_id = "g"
        topics = ["vehicle.state.v1"]
        [mirror]
        output = "out.copy.v1"
    "#;

    #[test]
    fn command_line_beats_environment_beats_file() {
        let mut f = JobFile::parse(FILE).expect("valid");
        f.apply(
            [
                ("EVENTBUS_BROKERS".to_owned(), "env:9092".to_owned()),
                ("EVENTBUS_GROUP_ID".to_owned(), "env-group".to_owned()),
            ],
            &Overrides::default(),
        );
        assert_eq!(f.kafka.brokers(), Some("env:9092"));
        assert_eq!(f.source().expect("source").group_id, "env-group");
        f.apply(
            [],
            &Overrides {
                brokers: Some("cli:9092".into()),
                group: Some("cli-group".into()),
            },
        );
        assert_eq!(f.kafka.brokers(), Some("cli:9092"));
        assert_eq!(f.source().expect("source").group_id, "cli-group");
    }

    #[test]
    fn unknown_sections_and_keys_are_named() {
        let err = JobFile::parse("[mirorr]\noutput = \"x\"\n").expect_err("typo");
        assert!(format!("{err:#}").contains("mirorr"), "{err:#}");
        let err =
            JobFile::parse("[source]\ngroup_id = \"g\"\ntopics = [\"t\"]\ncommit_every = 1\n")
                .expect_err("typo");
        assert!(format!("{err:#}").contains("commit_every"), "{err:#}");
    }
}
