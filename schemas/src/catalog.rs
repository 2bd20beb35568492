//! The topic catalog (`schemas/topics.toml`) as code.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::SchemaError;

/// How a subject's schema may evolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Compatibility {
    /// New readers read old data.
    Backward,
    /// Old readers read new data.
    Forward,
    /// Both.
    Full,
    /// No check.
    None,
}

/// Kafka's `cleanup.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    /// Delete old segments by retention.
    Delete,
    /// Keep the last record per key.
    Compact,
}

impl CleanupPolicy {
    /// The value Kafka's topic config expects.
    pub fn as_kafka(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

/// One topic of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// `domain.event_type.vN`.
    pub name: String,
    /// Schema file, relative to the catalog's folder.
    pub schema: String,
    /// Registry subject of the value schema.
    pub subject: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// `retention.ms`; -1 keeps forever.
    pub retention_ms: i64,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// Compatibility mode of the subject.
    pub compatibility: Compatibility,
    /// Fields classified as personal data.
    #[serde(default)]
    pub pii: Vec<String>,
    /// Dead-letter topic. Default `<name>.dlq`.
    #[serde(default)]
    pub dlq: Option<String>,
}

impl TopicSpec {
    /// The dead-letter topic.
    pub fn dlq_topic(&self) -> String {
        self.dlq
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.name))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    topic: Vec<TopicSpec>,
}

/// The whole catalog, checked.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Folder holding the catalog and the schema files.
    pub dir: PathBuf,
    /// Topics in file order.
    pub topics: Vec<TopicSpec>,
}

impl Catalog {
    /// Reads and checks a catalog file.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or a topic is invalid (the error names it).
    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
            path: path.to_owned(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
        Self::parse(&text, dir).map_err(|e| match e {
            SchemaError::Toml { reason, .. } => SchemaError::Toml {
                path: path.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// Parses and checks catalog text whose schema files live in `dir`.
    ///
    /// # Errors
    /// Invalid TOML, an unknown key, or an invalid topic (the error names it).
    pub fn parse(text: &str, dir: PathBuf) -> Result<Self, SchemaError> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| SchemaError::Toml {
            path: dir.join("topics.toml"),
            reason: e.to_string(),
        })?;
        let mut seen = HashSet::new();
        for t in &file.topic {
            check_topic(t)?;
            if !seen.insert(t.name.as_str()) {
                return Err(topic_error(&t.name, "listed twice"));
            }
        }
        Ok(Self {
            dir,
            topics: file.topic,
        })
    }

    /// The topic of that name.
    pub fn topic(&self, name: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.name == name)
    }
}

fn topic_error(topic: &str, reason: impl Into<String>) -> SchemaError {
    SchemaError::Topic {
        topic: topic.to_owned(),
        reason: reason.into(),
    }
}

/// `domain.event_type.vN`: two lowercase words (letters, digits, `_`, starting with a
/// letter) and a version `v` followed by digits.
pub fn is_valid_topic_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    let word = |w: &str| {
        w.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && w.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    parts.len() == 3
        && word(parts[0])
        && word(parts[1])
        && parts[2]
            .strip_prefix('v')
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

fn check_topic(t: &TopicSpec) -> Result<(), SchemaError> {
    if !is_valid_topic_name(&t.name) {
        return Err(topic_error(
            &t.name,
            "names must read domain.event_type.vN (lowercase words, e.g. vehicle.state.v1)",
        ));
    }
    if t.partitions < 1 {
        return Err(topic_error(&t.name, "partitions must be at least 1"));
    }
    if t.replication_factor < 1 {
        return Err(topic_error(
            &t.name,
            "replication_factor must be at least 1",
        ));
    }
    if t.retention_ms < -1 || t.retention_ms == 0 {
        return Err(topic_error(
            &t.name,
            "retention_ms must be positive, or -1 for forever",
        ));
    }
    if t.subject.trim().is_empty() {
        return Err(topic_error(&t.name, "subject must not be empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("topics.toml");
        Catalog::load(&path).expect("the committed catalog is valid")
    }

    #[test]
    fn the_catalog_holds_the_seed_topics_as_designed() {
        let c = catalog();
        let day = 86_400_000i64;
        for (name, partitions, retention) in [
            ("vehicle.state.v1", 50, 7 * day),
            ("vehicle.commands.v1", 50, 30 * day),
            ("fleet.operations.v1", 10, 90 * day),
            ("safety.emergency.v1", 5, 2557 * day),
            ("telemetry.raw.v1", 100, day),
        ] {
            let t = c.topic(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(
                (t.partitions, t.retention_ms),
                (partitions, retention),
                "{name}"
            );
            assert!(
                c.dir.join(&t.schema).exists(),
                "{name}: schema file {}",
                t.schema
            );
        }
        assert_eq!(
            c.topic("vehicle.state.v1").map(|t| t.pii.clone()),
            Some(vec!["driver_id".to_owned()])
        );
        assert_eq!(
            c.topic("fleet.operations.v1")
                .map(TopicSpec::dlq_topic)
                .as_deref(),
            Some("fleet.operations.v1.dlq")
        );
    }

    #[test]
    fn topic_names_follow_the_convention() {
        for ok in ["vehicle.state.v1", "fleet.trip_events.v12", "a1.b_2.v0"] {
            assert!(is_valid_topic_name(ok), "{ok}");
        }
        for bad in [
            "vehicle.state",
            "Vehicle.state.v1",
            "vehicle.state.v",
            "vehicle.state.1",
            "a.b.c.v1",
            "vehicle..v1",
            "vehicle-state.x.v1",
        ] {
            assert!(!is_valid_topic_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_bad_topic_is_named() {
        let text = r#"
            [[topic]]
            name = "VehicleState"
            schema = "VehicleState.avsc"
            subject = "s"
            partitions = 1
            replication_factor = 1
            retention_ms = 1000
            cleanup_policy = "delete"
            compatibility = "BACKWARD"
        "#;
        let err = Catalog::parse(text, PathBuf::from(".")).expect_err("bad name");
        assert!(err.to_string().contains("`VehicleState`"), "{err}");
        let err = Catalog::parse(
            &text
                .replace("VehicleState\"\n", "a.b.v1\"\n")
                .replace("compatibility", "compatibilty"),
            PathBuf::from("."),
        )
        .expect_err("typo");
        assert!(err.to_string().contains("compatibilty"), "{err}");
    }
}
