//! Configuration: the runtime's own settings, the consumer group, and librdkafka
//! properties passed through untouched.
//!
//! Every struct here refuses unknown keys, so a misspelt key is an error that names it.
//! The `[kafka]` table is the exception by design: any librdkafka property goes there,
//! and librdkafka itself rejects the ones it does not know, by name, at start-up.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::RuntimeError;

/// Settings of the executor.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Records of one partition delivered and not yet committable before that partition
    /// is paused at the consumer. Default 10000.
    pub max_in_flight_per_partition: usize,
    /// Records of the whole job delivered and not yet committable before every partition
    /// is paused. Default 100000.
    pub max_in_flight: usize,
    /// Bytes (keys, values and headers) of one partition's records delivered and not yet
    /// committable before that partition is paused: what bounds memory when messages are
    /// large. Default 64 MiB.
    pub max_in_flight_bytes_per_partition: usize,
    /// Bytes of the whole job's records delivered and not yet committable before every
    /// partition is paused. Default 512 MiB. Resident memory stays under this plus
    /// librdkafka's own prefetch queue (`queued.max.messages.kbytes`, 64 MiB by default)
    /// and a fixed overhead.
    pub max_in_flight_bytes: usize,
    /// How long a revoked partition, or the whole job at shutdown, may take to drain its
    /// in-flight records before what is done is committed and the rest left for
    /// redelivery. Default 30000 ms.
    pub drain_timeout_ms: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_in_flight_per_partition: 10_000,
            max_in_flight: 100_000,
            max_in_flight_bytes_per_partition: 64 << 20,
            max_in_flight_bytes: 512 << 20,
            drain_timeout_ms: 30_000,
        }
    }
}

impl RuntimeConfig {
    /// Checks that every bound is usable.
    ///
    /// # Errors
    /// [`RuntimeError::Config`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if self.max_in_flight_per_partition == 0 {
            return Err(config_error(
                "runtime.max_in_flight_per_partition",
                "must be at least 1",
            ));
        }
        if self.max_in_flight < self.max_in_flight_per_partition {
            return Err(config_error(
                "runtime.max_in_flight",
                "must be at least runtime.max_in_flight_per_partition",
            ));
        }
        if self.max_in_flight_bytes_per_partition == 0 {
            return Err(config_error(
                "runtime.max_in_flight_bytes_per_partition",
                "must be at least 1",
            ));
        }
        if self.max_in_flight_bytes < self.max_in_flight_bytes_per_partition {
            return Err(config_error(
                "runtime.max_in_flight_bytes",
                "must be at least runtime.max_in_flight_bytes_per_partition",
            ));
        }
        Ok(())
    }
}

pub(crate) fn config_error(key: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::config(key, reason)
}

/// librdkafka properties, passed through as given (`"session.timeout.ms" = 6000`).
/// Strings, integers, floats and booleans are accepted and handed over as strings.
///
/// A property whose name ends in `_file` names a file holding the value of the property
/// without that suffix (`"sasl.password_file" = "/run/secrets/kafka"`), as container
/// secrets are mounted; [`KafkaProperties::read_secret_files`] reads them. Secret values
/// (passwords, keys, OAuth secrets: see [`is_secret`]) never appear in this type's
/// `Debug` output.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BTreeMap<String, toml::Value>")]
pub struct KafkaProperties(BTreeMap<String, String>);

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(k, v)| (k, if is_secret(k) { MASK } else { v })),
            )
            .finish()
    }
}

/// What a secret value reads as wherever eventbus shows a setting.
pub const MASK: &str = "***";

/// Whether a librdkafka property (or another setting, by its name) holds a secret:
/// passwords, passphrases, secrets, tokens, private keys and the OAUTHBEARER
/// configuration. Such values are never logged or shown.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let key = key.strip_suffix("_file").unwrap_or(&key);
    ["password", "passphrase", "secret", "token"]
        .iter()
        .any(|word| key.contains(word))
        || key == "sasl.oauthbearer.config"
        || key == "ssl.key.pem"
        || key == "ssl_key"
}

/// Reads a secret from a file named by a `*_file` setting: the whole file, less one
/// trailing line end (as `echo secret > file` writes it).
///
/// # Errors
/// The file cannot be read; the message names `setting` and the path, never the content.
pub fn read_secret_file(setting: &str, path: &str) -> Result<String, RuntimeError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(setting, format!("cannot read the file {path:?}: {e}")))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
}

impl TryFrom<BTreeMap<String, toml::Value>> for KafkaProperties {
    type Error = String;
    fn try_from(map: BTreeMap<String, toml::Value>) -> Result<Self, Self::Error> {
        let mut out = BTreeMap::new();
        for (k, v) in map {
            let s = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "kafka property `{k}` must be a string, number or boolean, not {}",
                        other.type_str()
                    ));
                }
            };
            out.insert(k, s);
        }
        Ok(Self(out))
    }
}

/// Environment variable that sets `bootstrap.servers`.
pub const ENV_BROKERS: &str = "EVENTBUS_BROKERS";
/// Prefix of environment variables that set any librdkafka property:
/// `EVENTBUS_KAFKA_SESSION_TIMEOUT_MS=6000` sets `session.timeout.ms`, and
/// `EVENTBUS_KAFKA_SASL_PASSWORD_FILE=/run/secrets/kafka` sets `sasl.password_file`.
pub const ENV_KAFKA_PREFIX: &str = "EVENTBUS_KAFKA_";

impl KafkaProperties {
    /// The properties a producer understands: these less the consumer-only ones, which
    /// librdkafka would warn about on a producer.
    pub fn producer_properties(&self) -> impl Iterator<Item = (&str, &str)> {
        const CONSUMER_ONLY: &[&str] = &[
            "group.id",
            "group.instance.id",
            "partition.assignment.strategy",
            "session.timeout.ms",
            "heartbeat.interval.ms",
            "max.poll.interval.ms",
            "auto.offset.reset",
            "enable.partition.eof",
            "enable.auto.commit",
            "enable.auto.offset.store",
            "auto.commit.interval.ms",
            "fetch.min.bytes",
            "fetch.max.bytes",
            "fetch.wait.max.ms",
            "max.partition.fetch.bytes",
            "queued.min.messages",
            "queued.max.messages.kbytes",
            "isolation.level",
            "check.crcs",
            "group.protocol",
        ];
        self.iter().filter(|(k, _)| !CONSUMER_ONLY.contains(k))
    }

    /// The properties a consumer understands: these less the producer-only ones, which
    /// one `[kafka]` section shares with the job's producers and librdkafka would warn
    /// about on a consumer.
    pub fn consumer_properties(&self) -> impl Iterator<Item = (&str, &str)> {
        const PRODUCER_ONLY: &[&str] = &[
            "linger.ms",
            "queue.buffering.max.ms",
            "queue.buffering.max.messages",
            "queue.buffering.max.kbytes",
            "batch.num.messages",
            "batch.size",
            "acks",
            "request.required.acks",
            "enable.idempotence",
            "compression.type",
            "compression.codec",
            "message.timeout.ms",
            "delivery.timeout.ms",
            "retries",
            "message.send.max.retries",
            "partitioner",
            "transactional.id",
        ];
        self.iter().filter(|(k, _)| !PRODUCER_ONLY.contains(k))
    }

    /// A librdkafka config for the producers that make records done (sinks, dead
    /// letters, replays): these properties less the consumer-only ones, with the
    /// idempotent producer and `acks=all` forced, and `linger.ms` 5 unless set.
    ///
    /// Secrets named by `*_file` settings are read (see
    /// [`KafkaProperties::read_secret_files`]).
    ///
    /// # Errors
    /// [`RuntimeError::Config`] when `enable.idempotence` or `acks` is set to something
    /// weaker (`what` names the producer in the message), or a secret file cannot be
    /// read.
    pub fn durable_producer(&self, what: &str) -> Result<rdkafka::ClientConfig, RuntimeError> {
        for (key, allowed) in [
            ("enable.idempotence", &["true"][..]),
            ("acks", &["all", "-1"][..]),
        ] {
            if self.get(key).is_some_and(|v| !allowed.contains(&v)) {
                return Err(config_error(
                    &format!("kafka.{key}"),
                    format!(
                        "{what} needs {key}={}: records are done only once durable",
                        allowed[0]
                    ),
                ));
            }
        }
        let mut resolved = self.clone();
        resolved.read_secret_files()?;
        let mut cfg = rdkafka::ClientConfig::new();
        for (k, v) in resolved.producer_properties() {
            cfg.set(k, v);
        }
        cfg.set("enable.idempotence", "true").set("acks", "all");
        if self.get("linger.ms").is_none() {
            cfg.set("linger.ms", "5");
        }
        Ok(cfg)
    }

    /// Replaces every `<property>_file` setting by `<property>` read from that file
    /// (see [`read_secret_file`]). Call it once the file and the environment are applied.
    ///
    /// # Errors
    /// [`RuntimeError::Config`] naming `kafka.<property>_file` and the path when the file
    /// cannot be read.
    pub fn read_secret_files(&mut self) -> Result<&mut Self, RuntimeError> {
        let files: Vec<(String, String)> = self
            .0
            .iter()
            .filter(|(k, _)| k.ends_with("_file"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, path) in files {
            let value = read_secret_file(&format!("kafka.{key}"), &path)?;
            self.0.remove(&key);
            let property = key.strip_suffix("_file").unwrap_or(&key).to_owned();
            self.0.insert(property, value);
        }
        Ok(self)
    }

    /// A librdkafka config with every one of these properties: for clients that are
    /// neither the job's consumer nor its durable producers (metadata, offsets, admin).
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut cfg = rdkafka::ClientConfig::new();
        for (k, v) in self.iter() {
            cfg.set(k, v);
        }
        cfg
    }

    /// Only `bootstrap.servers`.
    pub fn with_brokers(brokers: &str) -> Self {
        let mut p = Self::new();
        p.set("bootstrap.servers", brokers);
        p
    }

    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets one property.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Sets a property unless the user already did.
    pub fn set_default(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.0.entry(key.to_owned()).or_insert_with(|| value.into());
        self
    }

    /// One property.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Every property, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The bootstrap servers, or `None` if not set.
    pub fn brokers(&self) -> Option<&str> {
        self.get("bootstrap.servers")
    }

    /// The bootstrap servers; every Kafka client of a job needs them.
    ///
    /// # Errors
    /// [`RuntimeError::Config`] naming `kafka.bootstrap.servers` when unset or blank.
    pub fn require_brokers(&self) -> Result<&str, RuntimeError> {
        self.brokers()
            .filter(|b| !b.trim().is_empty())
            .ok_or_else(|| {
                config_error(
                    "kafka.bootstrap.servers",
                    "no brokers given: set it in [kafka], EVENTBUS_BROKERS or --brokers",
                )
            })
    }

    /// Applies `EVENTBUS_BROKERS` and `EVENTBUS_KAFKA_*` from the given variables (pass
    /// `std::env::vars()`). Environment wins over the file.
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> &mut Self {
        for (k, v) in vars {
            if k == ENV_BROKERS {
                self.set("bootstrap.servers", v);
            } else if let Some(rest) = k.strip_prefix(ENV_KAFKA_PREFIX)
                && !rest.is_empty()
            {
                let (name, file) = match rest.strip_suffix("_FILE") {
                    Some(name) if !name.is_empty() => (name, "_file"),
                    _ => (rest, ""),
                };
                self.set(
                    format!("{}{file}", name.to_ascii_lowercase().replace('_', ".")),
                    v,
                );
            }
        }
        self
    }
}

/// Which topics a Kafka source reads, as which consumer group, and how it commits.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Consumer group id. Required.
    pub group_id: String,
    /// Topics to subscribe to. Required, at least one.
    pub topics: Vec<String>,
    /// How often done offsets are committed. Default 5000 ms.
    #[serde(default = "defaults::commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// How long start-up may wait for the brokers to answer before failing. Default
    /// 15000 ms.
    #[serde(default = "defaults::startup_timeout_ms")]
    pub startup_timeout_ms: u64,
}

mod defaults {
    pub(super) fn commit_interval_ms() -> u64 {
        5_000
    }
    pub(super) fn startup_timeout_ms() -> u64 {
        15_000
    }
}

impl SourceConfig {
    /// A source over `topics` in group `group_id` with default intervals.
    pub fn new(
        group_id: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            group_id: group_id.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            commit_interval_ms: defaults::commit_interval_ms(),
            startup_timeout_ms: defaults::startup_timeout_ms(),
        }
    }

    /// Checks required values.
    ///
    /// # Errors
    /// [`RuntimeError::Config`] naming the key.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if self.group_id.trim().is_empty() {
            return Err(config_error("source.group_id", "must not be empty"));
        }
        if self.topics.is_empty() {
            return Err(config_error("source.topics", "name at least one topic"));
        }
        if let Some(t) = self.topics.iter().find(|t| t.trim().is_empty()) {
            return Err(config_error(
                "source.topics",
                format!("empty topic name {t:?}"),
            ));
        }
        if self.commit_interval_ms == 0 {
            return Err(config_error(
                "source.commit_interval_ms",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        kafka: KafkaProperties,
        #[serde(default)]
        runtime: RuntimeConfig,
        source: SourceConfig,
    }

    #[test]
    fn each_client_gets_only_the_properties_it_understands() {
        let mut p = KafkaProperties::new();
        p.set("bootstrap.servers", "b:9092")
            .set("linger.ms", "1")
            .set("fetch.wait.max.ms", "5");
        let consumer: Vec<&str> = p.consumer_properties().map(|(k, _)| k).collect();
        assert_eq!(consumer, ["bootstrap.servers", "fetch.wait.max.ms"]);
        let producer: Vec<&str> = p.producer_properties().map(|(k, _)| k).collect();
        assert_eq!(producer, ["bootstrap.servers", "linger.ms"]);
    }

    #[test]
    fn kafka_properties_pass_through_and_env_wins() {
        let f: File = toml::from_str(
            r#"
            [kafka]
            "bootstrap.servers" = "a:9092"
            "session.timeout.ms" = 6000
            "enable.partition.eof" = false
            [source]
            group_id = "g"
            topics = ["vehicle.state.v1"]
            "#,
        )
        .expect("valid config");
        assert_eq!(f.kafka.get("session.timeout.ms"), Some("6000"));
        assert_eq!(f.kafka.get("enable.partition.eof"), Some("false"));
        assert_eq!(f.source.commit_interval_ms, 5_000);
        assert_eq!(f.runtime, RuntimeConfig::default());
        let mut k = f.kafka.clone();
        k.apply_env([
            ("EVENTBUS_BROKERS".to_owned(), "b:9092".to_owned()),
            (
                "EVENTBUS_KAFKA_FETCH_MAX_BYTES".to_owned(),
                "1024".to_owned(),
            ),
            ("HOME".to_owned(), "/root".to_owned()),
        ]);
        assert_eq!(k.brokers(), Some("b:9092"));
        assert_eq!(k.get("fetch.max.bytes"), Some("1024"));
        assert_eq!(k.iter().count(), 4);
    }

    #[test]
    fn secrets_come_from_files_and_never_show_in_debug() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cr3t-value\n").expect("write");
        let mut p = KafkaProperties::new();
        p.set("security.protocol", "sasl_ssl").apply_env([(
            "EVENTBUS_KAFKA_SASL_PASSWORD_FILE".to_owned(),
            path.display().to_string(),
        )]);
        assert_eq!(
            p.get("sasl.password_file"),
            Some(path.display().to_string().as_str())
        );
        p.read_secret_files().expect("readable");
        assert_eq!(p.get("sasl.password"), Some("s3cr3t-value"));
        assert_eq!(p.get("sasl.password_file"), None);
        let shown = format!("{p:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            shown.contains("sasl_ssl") && shown.contains(MASK),
            "{shown}"
        );
        // A producer built from properties that still name a file reads it.
        let mut named = KafkaProperties::new();
        named.set("sasl.password_file", path.display().to_string());
        let producer = named.durable_producer("the test").expect("readable");
        assert_eq!(producer.get("sasl.password"), Some("s3cr3t-value"));
        assert_eq!(producer.get("sasl.password_file"), None);
        let mut missing = KafkaProperties::new();
        missing.set("ssl.key.password_file", "/nonexistent/key-password");
        let err = missing
            .read_secret_files()
            .expect_err("no such file")
            .to_string();
        assert!(
            err.contains("kafka.ssl.key.password_file") && err.contains("/nonexistent"),
            "{err}"
        );
        for key in [
            "sasl.password",
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
        ] {
            assert!(is_secret(key), "{key}");
        }
        for key in ["sasl.username", "ssl.ca.location", "security.protocol"] {
            assert!(!is_secret(key), "{key}");
        }
    }

    #[test]
    fn a_misspelt_key_is_named() {
        let err = toml::from_str::<File>(
            "[runtime]\nmax_in_flite = 3\n[source]\ngroup_id = \"g\"\ntopics = [\"t\"]\n",
        )
        .expect_err("unknown key");
        assert!(err.to_string().contains("max_in_flite"), "{err}");
    }

    #[test]
    fn bounds_are_checked_by_name() {
        let cfg = RuntimeConfig {
            max_in_flight: 1,
            ..RuntimeConfig::default()
        };
        let err = cfg.validate().expect_err("bad bound").to_string();
        assert!(err.contains("runtime.max_in_flight"), "{err}");
        let err = SourceConfig::new("g", Vec::<String>::new())
            .validate()
            .expect_err("no topics")
            .to_string();
        assert!(err.contains("source.topics"), "{err}");
    }
}
