//! Schema registries: where a schema id in the wire format is looked up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apache_avro::Schema;
use serde::Deserialize;

use crate::error::{RegistryError, SchemaError};

/// Resolves schema ids and subjects to schemas. Implementations cache: lookups sit on
/// every record's path.
pub trait SchemaRegistry: Send + Sync {
    /// The schema registered under `id`; `Ok(None)` when the registry answers that it
    /// has no such id (a Permanent fact about the record).
    ///
    /// # Errors
    /// The registry could not answer (Transient when unreachable): the caller must not
    /// conclude the id is unknown.
    fn schema(&self, id: u32) -> Result<Option<Arc<Schema>>, RegistryError>;

    /// The latest version of `subject`, with its id; `Ok(None)` for an unknown subject.
    ///
    /// # Errors
    /// As [`SchemaRegistry::schema`].
    fn latest(&self, subject: &str) -> Result<Option<(u32, Arc<Schema>)>, RegistryError>;
}

impl<R: SchemaRegistry + ?Sized> SchemaRegistry for Arc<R> {
    fn schema(&self, id: u32) -> Result<Option<Arc<Schema>>, RegistryError> {
        (**self).schema(id)
    }
    fn latest(&self, subject: &str) -> Result<Option<(u32, Arc<Schema>)>, RegistryError> {
        (**self).latest(subject)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdsFile {
    schema: Vec<IdEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdEntry {
    id: u32,
    subject: String,
    version: u32,
    file: String,
}

/// One registered schema version.
#[derive(Debug, Clone)]
pub struct Registered {
    /// Its id.
    pub id: u32,
    /// Its subject.
    pub subject: String,
    /// Its version within the subject.
    pub version: u32,
    /// The file it was read from.
    pub file: PathBuf,
    /// The parsed schema.
    pub schema: Arc<Schema>,
}

/// The embedded registry: `registry.toml` beside the `.avsc` files assigns every
/// (subject, version) a permanent id, kept in git, so an id never changes between runs
/// or machines.
#[derive(Debug, Clone)]
pub struct FileRegistry {
    by_id: HashMap<u32, Registered>,
    latest: HashMap<String, u32>,
}

impl FileRegistry {
    /// Reads `dir/registry.toml` and every schema file it names.
    ///
    /// # Errors
    /// A file cannot be read or parsed, an id or a (subject, version) repeats, or a
    /// schema is invalid. The error names the entry.
    pub fn open(dir: &Path) -> Result<Self, SchemaError> {
        Self::load(dir, |path| {
            std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
                path: path.to_owned(),
                source,
            })
        })
    }

    /// The schemas compiled into this crate: the committed `registry.toml` and `.avsc`
    /// files, for binaries that run away from the source tree (the demo).
    ///
    /// # Errors
    /// Only if the committed files are invalid, which the tests rule out.
    pub fn embedded() -> Result<Self, SchemaError> {
        Self::load(Path::new("<embedded>"), |path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            EMBEDDED
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, text)| (*text).to_owned())
                .ok_or_else(|| SchemaError::Io {
                    path: path.to_owned(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "not embedded"),
                })
        })
    }

    fn load(
        dir: &Path,
        read: impl Fn(&Path) -> Result<String, SchemaError>,
    ) -> Result<Self, SchemaError> {
        let path = dir.join("registry.toml");
        let text = read(&path)?;
        let ids: IdsFile = toml::from_str(&text).map_err(|e| SchemaError::Toml {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut by_id = HashMap::new();
        let mut latest: HashMap<String, (u32, u32)> = HashMap::new();
        for e in ids.schema {
            let entry_error = |reason: String| SchemaError::Registry {
                id: e.id,
                subject: e.subject.clone(),
                reason,
            };
            if by_id.contains_key(&e.id) {
                return Err(entry_error("id used twice".to_owned()));
            }
            if by_id
                .values()
                .any(|r: &Registered| r.subject == e.subject && r.version == e.version)
            {
                return Err(entry_error(format!("version {} listed twice", e.version)));
            }
            let file = dir.join(&e.file);
            let schema = parse_schema(&file, &read(&file)?)?;
            let slot = latest.entry(e.subject.clone()).or_insert((e.version, e.id));
            if e.version >= slot.0 {
                *slot = (e.version, e.id);
            }
            by_id.insert(
                e.id,
                Registered {
                    id: e.id,
                    subject: e.subject,
                    version: e.version,
                    file,
                    schema: Arc::new(schema),
                },
            );
        }
        Ok(Self {
            by_id,
            latest: latest.into_iter().map(|(s, (_, id))| (s, id)).collect(),
        })
    }

    /// Every registered version, by id.
    pub fn entries(&self) -> impl Iterator<Item = &Registered> {
        self.by_id.values()
    }
}

impl FileRegistry {
    /// The schema registered under `id`, if any (the file registry cannot fail).
    pub fn get(&self, id: u32) -> Option<Arc<Schema>> {
        self.by_id.get(&id).map(|r| r.schema.clone())
    }

    /// The latest version of `subject` with its id, if the subject is registered.
    pub fn latest_of(&self, subject: &str) -> Option<(u32, Arc<Schema>)> {
        let id = *self.latest.get(subject)?;
        self.get(id).map(|s| (id, s))
    }
}

impl SchemaRegistry for FileRegistry {
    fn schema(&self, id: u32) -> Result<Option<Arc<Schema>>, RegistryError> {
        Ok(self.get(id))
    }

    fn latest(&self, subject: &str) -> Result<Option<(u32, Arc<Schema>)>, RegistryError> {
        Ok(self.latest_of(subject))
    }
}

/// Reads and parses one `.avsc` file.
///
/// # Errors
/// [`SchemaError::Io`] or [`SchemaError::Schema`] naming the file.
pub fn read_schema(path: &Path) -> Result<Schema, SchemaError> {
    let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_schema(path, &text)
}

fn parse_schema(path: &Path, text: &str) -> Result<Schema, SchemaError> {
    Schema::parse_str(text).map_err(|e| SchemaError::Schema {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The committed registry and schema files, compiled in.
const EMBEDDED: &[(&str, &str)] = &[
    ("registry.toml", include_str!("../registry.toml")),
    ("VehicleState.avsc", include_str!("../VehicleState.avsc")),
    (
        "VehicleCommand.avsc",
        include_str!("../VehicleCommand.avsc"),
    ),
    (
        "FleetOperation.avsc",
        include_str!("../FleetOperation.avsc"),
    ),
    (
        "EmergencyEvent.avsc",
        include_str!("../EmergencyEvent.avsc"),
    ),
    (
        "TelemetryBatch.avsc",
        include_str!("../TelemetryBatch.avsc"),
    ),
    ("Alert.avsc", include_str!("../Alert.avsc")),
    ("FleetMinute.avsc", include_str!("../FleetMinute.avsc")),
    (
        "FleetMinutePartial.avsc",
        include_str!("../FleetMinutePartial.avsc"),
    ),
];

/// The folder of this crate's committed schemas, for tests, the demo and the generator.
pub fn bundled_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}
