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
//!
//! [registry]                    # a Confluent-API schema registry for jobs that decode
//! url = "https://registry:8081" # (default: the file registry compiled in)
//! user = "ops"                  # basic auth, optional
//! password_file = "/run/secrets/registry"  # or password = "..."; or token(_file)
//! ca_file = "/etc/eventbus/ca.pem"         # a private CA, optional
//! ```
//!
//! Precedence, lowest first: the file, the environment (`EVENTBUS_BROKERS`,
//! `EVENTBUS_GROUP_ID`, `EVENTBUS_KAFKA_*`, `EVENTBUS_REGISTRY_URL`,
//! `EVENTBUS_REGISTRY_USER`, `EVENTBUS_REGISTRY_PASSWORD(_FILE)`,
//! `EVENTBUS_REGISTRY_TOKEN(_FILE)`, `EVENTBUS_REGISTRY_CA_FILE`), the command line
//! (`--brokers`, `--group`, `--registry`).
//!
//! Secrets (`[kafka]` passwords and keys, the registry's password and token, the S3
//! secret key) can each come from a file (`*_file`), as container secrets are mounted;
//! no log line, error or `Debug` output shows them.

use std::path::Path;
use std::time::Duration;

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
    pub warehouse: Option<eventbus_operators::ParquetSinkConfig>,
    /// Settings of the `analytics` job.
    #[serde(default)]
    pub analytics: Option<crate::analytics::AnalyticsConfig>,
    /// The operations endpoint: metrics and health probes.
    #[serde(default)]
    pub telemetry: crate::serve::TelemetryConfig,
    /// Settings of the `alerting` job.
    #[serde(default)]
    pub alerting: Option<crate::alerting::AlertingConfig>,
    /// The alerting job's rules (`[[rule]]`).
    #[serde(default)]
    pub rule: Vec<crate::alerting::rules::RuleSpec>,
    /// The alerting job's webhooks (`[[webhook]]`).
    #[serde(default)]
    pub webhook: Vec<crate::alerting::webhook::WebhookSpec>,
    /// Settings of the `dlq-processor` job, and the category rules `eventbus dlq` uses.
    #[serde(default)]
    pub dlq_processor: Option<crate::dlq_processor::ProcessorConfig>,
    /// Where jobs that quarantine bad records write them (the warehouse job): DLQ topic
    /// per source topic (default the catalog's, else `<topic>.dlq`), PII fields, write
    /// attempts.
    #[serde(default)]
    pub dlq: Option<eventbus_dlq::DlqConfig>,
    /// The schema registry jobs that decode records look writer schemas up in.
    #[serde(default)]
    pub registry: RegistryConfig,
}

/// The `[registry]` section. Without a URL, the file registry compiled in (the ids in
/// `schemas/registry.toml`) is used. The password and the token never show in its
/// `Debug` output.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of a Confluent-API schema registry, e.g. `http://registry:8081`.
    pub url: Option<String>,
    /// Basic-auth user (with `password`).
    pub user: Option<String>,
    /// Basic-auth password (with `user`).
    pub password: Option<String>,
    /// A file holding the password; replaces `password`.
    pub password_file: Option<String>,
    /// A bearer token, sent as `Authorization: Bearer <token>` instead of basic auth.
    pub token: Option<String>,
    /// A file holding the token; replaces `token`.
    pub token_file: Option<String>,
    /// PEM file of the certificate authorities an `https://` registry is checked
    /// against, instead of the built-in web roots.
    pub ca_file: Option<String>,
    /// PEM file of a client certificate (chain) for registries that ask for one, with
    /// `key_file`.
    pub cert_file: Option<String>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<String>,
    /// Bound on one request, connect included. Default 10,000.
    pub timeout_ms: Option<u64>,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mask = |v: &Option<String>| v.as_ref().map(|_| eventbus_runtime::MASK);
        f.debug_struct("RegistryConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &mask(&self.password))
            .field("password_file", &self.password_file)
            .field("token", &mask(&self.token))
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl RegistryConfig {
    /// The registry jobs look writer schemas up in: the HTTP one this section names, else
    /// the file registry compiled in.
    ///
    /// # Errors
    /// As [`RegistryConfig::http`], or the compiled-in registry does not load.
    pub fn client(&self) -> anyhow::Result<std::sync::Arc<dyn eventbus_schemas::SchemaRegistry>> {
        Ok(match self.http()? {
            Some(http) => std::sync::Arc::new(http),
            None => std::sync::Arc::new(eventbus_schemas::FileRegistry::embedded()?),
        })
    }

    /// The HTTP registry client this section describes, or `None` for the file registry.
    ///
    /// # Errors
    /// A user without a password or the other way round, a URL that is not http(s), or
    /// a secret, CA or certificate file that cannot be read or holds nothing usable.
    pub fn http(&self) -> anyhow::Result<Option<eventbus_schemas::http::HttpRegistry>> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!(
                "registry.url {:?} is not an http:// or https:// URL",
                eventbus_schemas::http::HttpRegistryConfig::new(url.clone()).url
            );
        }
        let secret = |value: &Option<String>, file: &Option<String>, key: &str| match file {
            Some(path) => {
                eventbus_runtime::read_secret_file(&format!("registry.{key}_file"), path).map(Some)
            }
            None => Ok(value.clone()),
        };
        let password = secret(&self.password, &self.password_file, "password")?;
        let mut config = eventbus_schemas::http::HttpRegistryConfig::new(url.clone());
        match (&self.user, password) {
            (Some(u), Some(p)) => config.basic_auth = Some((u.clone(), p)),
            (None, None) => {}
            _ => bail!(
                "registry.user and registry.password (or password_file) go together: set \
                 both or neither"
            ),
        }
        config.bearer_token = secret(&self.token, &self.token_file, "token")?;
        let read = |key: &str, path: &str| {
            std::fs::read(path)
                .with_context(|| format!("registry.{key}: cannot read the file {path:?}"))
        };
        if let Some(path) = &self.ca_file {
            config.trust_pem(
                &format!("registry.ca_file {path:?}"),
                &read("ca_file", path)?,
            )?;
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => config.client_pem(
                &format!("registry.cert_file {cert:?} with key_file {key:?}"),
                &read("cert_file", cert)?,
                &read("key_file", key)?,
            )?,
            (None, None) => {}
            _ => bail!("registry.cert_file and registry.key_file go together: set both or neither"),
        }
        if let Some(ms) = self.timeout_ms {
            config.timeout = Duration::from_millis(ms.max(1));
        }
        Ok(Some(eventbus_schemas::http::HttpRegistry::new(config)))
    }
}

/// Overrides from the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--brokers`: replaces `bootstrap.servers`.
    pub brokers: Option<String>,
    /// `--group`: replaces `source.group_id`.
    pub group: Option<String>,
    /// `--registry`: replaces `registry.url`.
    pub registry: Option<String>,
}

impl JobFile {
    /// The personal-data fields per topic: the catalog's, and those `[dlq] pii` adds.
    ///
    /// # Errors
    /// The catalog cannot be read.
    pub fn pii(&self) -> anyhow::Result<std::collections::HashMap<String, Vec<String>>> {
        let catalog = crate::load_catalog(None)?;
        Ok(self
            .dlq
            .clone()
            .unwrap_or_default()
            .with_catalog(&catalog)
            .pii)
    }

    /// A job file without `[source]` gets one: group `group` (unless `EVENTBUS_GROUP_ID`
    /// or `--group` names another) and these topics.
    pub fn default_source(&mut self, group: &str, topics: Vec<String>, overrides: &Overrides) {
        if self.source.is_none() {
            let mut source = SourceConfig::new(group, topics);
            if let Some(group) = overrides
                .group
                .clone()
                .or_else(|| std::env::var(ENV_GROUP_ID).ok())
            {
                source.group_id = group;
            }
            self.source = Some(source);
        }
    }

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
        file.kafka.read_secret_files()?;
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
        for (key, value) in &vars {
            let slot = match key.as_str() {
                "EVENTBUS_REGISTRY_URL" => &mut self.registry.url,
                "EVENTBUS_REGISTRY_USER" => &mut self.registry.user,
                "EVENTBUS_REGISTRY_PASSWORD" => &mut self.registry.password,
                "EVENTBUS_REGISTRY_PASSWORD_FILE" => &mut self.registry.password_file,
                "EVENTBUS_REGISTRY_TOKEN" => &mut self.registry.token,
                "EVENTBUS_REGISTRY_TOKEN_FILE" => &mut self.registry.token_file,
                "EVENTBUS_REGISTRY_CA_FILE" => &mut self.registry.ca_file,
                _ => continue,
            };
            *slot = Some(value.clone());
        }
        if let Some(url) = &overrides.registry {
            self.registry.url = Some(url.clone());
        }
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
                registry: None,
            },
        );
        assert_eq!(f.kafka.brokers(), Some("cli:9092"));
        assert_eq!(f.source().expect("source").group_id, "cli-group");
    }

    #[test]
    fn the_registry_comes_from_the_file_the_environment_or_the_command_line() {
        let mut f = JobFile::parse("[registry]\nurl = \"http://file:8081\"\nuser = \"u\"\n")
            .expect("valid");
        assert!(format!("{:#}", f.registry.http().expect_err("no password")).contains("password"));
        f.apply(
            [
                (
                    "EVENTBUS_REGISTRY_URL".to_owned(),
                    "http://env:8081".to_owned(),
                ),
                ("EVENTBUS_REGISTRY_PASSWORD".to_owned(), "p".to_owned()),
            ],
            &Overrides::default(),
        );
        assert_eq!(f.registry.url.as_deref(), Some("http://env:8081"));
        assert!(f.registry.http().expect("user and password").is_some());
        f.apply(
            [],
            &Overrides {
                registry: Some("http://cli:8081".into()),
                ..Overrides::default()
            },
        );
        assert_eq!(f.registry.url.as_deref(), Some("http://cli:8081"));
        assert!(JobFile::default().registry.http().expect("none").is_none());
        let bad = JobFile::parse("[registry]\nurl = \"registry:8081\"\n").expect("valid toml");
        assert!(
            format!("{:#}", bad.registry.http().expect_err("no scheme")).contains("registry.url")
        );
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

    #[test]
    fn the_warehouse_section_is_the_sinks_own_configuration() {
        let file = JobFile::parse(
            "[warehouse]\ntable_root = \"s3://b/p\"\nroll_rows = 10\nroll_bytes = 20\n\
             max_age_ms = 1500\nrow_group_rows = 30\nzstd_level = 3\ndead_letters = false\n\
             assume_single_writer = true\n[warehouse.event_time]\n\"t.v1\" = \"ts\"\n\
             [warehouse.s3]\nendpoint = \"http://127.0.0.1:9000\"\n",
        )
        .expect("parses");
        let wh = file.warehouse.expect("[warehouse]");
        assert_eq!(wh.table_root, "s3://b/p");
        assert_eq!(
            (wh.roll_rows, wh.roll_bytes, wh.row_group_rows),
            (10, 20, 30)
        );
        assert_eq!(wh.max_age, std::time::Duration::from_millis(1500));
        assert_eq!(wh.zstd_level, 3);
        assert!(!wh.dead_letters && wh.assume_single_writer);
        assert_eq!(wh.event_time_fields["t.v1"], "ts");
        assert_eq!(wh.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        // Every key optional; unknown ones named.
        let empty = JobFile::parse("[warehouse]\n").expect("parses");
        assert_eq!(
            empty.warehouse.expect("[warehouse]"),
            eventbus_operators::ParquetSinkConfig::default()
        );
        let err = JobFile::parse("[warehouse]\nmax_age = 3\n").expect_err("typo");
        assert!(format!("{err:#}").contains("max_age"), "{err:#}");
    }
}
