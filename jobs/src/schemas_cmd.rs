//! `eventbus schemas check`: every subject's working-tree schema against its earlier
//! versions, under the subject's compatibility mode.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use apache_avro::Schema;
use eventbus_schemas::registry::read_schema;
use eventbus_schemas::{Catalog, FileRegistry, compat};

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The registry subject.
    pub subject: String,
    /// Its compatibility mode.
    pub mode: String,
    /// What it was checked against: a git ref or a registered version.
    pub against: String,
    /// What breaks, naming the field.
    pub reason: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "subject {} ({} compatibility) against {}: {}",
            self.subject, self.mode, self.against, self.reason
        )
    }
}

/// What a check looked at and found.
#[derive(Debug, Default)]
pub struct Report {
    /// (subject, against) pairs compared.
    pub compared: Vec<(String, String)>,
    /// Rules broken.
    pub violations: Vec<Violation>,
    /// Things that could not be checked, and why.
    pub skipped: Vec<String>,
}

/// Checks the catalog in `dir` against git ref `against` and against the older versions
/// listed in `registry.toml`.
///
/// # Errors
/// The catalog, the registry or a working-tree schema cannot be read.
pub fn check(dir: &Path, against: &str) -> anyhow::Result<Report> {
    let catalog = Catalog::load(&dir.join("topics.toml"))?;
    let registry = FileRegistry::open(dir)?;
    let mut report = Report::default();
    for topic in &catalog.topics {
        let path = dir.join(&topic.schema);
        let current = read_schema(&path)?;
        let mode = format!("{:?}", topic.compatibility).to_uppercase();
        let mut earlier: Vec<(String, Schema)> = registry
            .entries()
            .filter(|e| e.subject == topic.subject && !same_file(&e.file, &path))
            .map(|e| {
                (
                    format!("registered version {} ({})", e.version, e.file.display()),
                    (*e.schema).clone(),
                )
            })
            .collect();
        match at_git_ref(&path, against) {
            Ok(Some(old)) => earlier.push((against.to_owned(), old)),
            Ok(None) => report
                .skipped
                .push(format!("{}: new since {against}", topic.subject)),
            Err(why) => report.skipped.push(format!(
                "{}: not compared with {against}: {why}",
                topic.subject
            )),
        }
        for (label, old) in earlier {
            if let Err(reason) = compat::check(topic.compatibility, &old, &current) {
                report.violations.push(Violation {
                    subject: topic.subject.clone(),
                    mode: mode.clone(),
                    against: label.clone(),
                    reason,
                });
            }
            report.compared.push((topic.subject.clone(), label));
        }
    }
    Ok(report)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The schema at `path` as of git ref `rev`: `Ok(None)` when the file did not exist
/// there, `Err` when git cannot answer (no repository, unknown ref).
fn at_git_ref(path: &Path, rev: &str) -> Result<Option<Schema>, String> {
    let abs = path.canonicalize().map_err(|e| e.to_string())?;
    let dir = abs
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let top = git(&dir, &["rev-parse", "--show-toplevel"])?;
    let top = PathBuf::from(top.trim());
    let rel = abs
        .strip_prefix(top.canonicalize().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let spec = format!("{rev}:{}", rel.display());
    if git(&top, &["cat-file", "-e", &spec]).is_err() {
        git(
            &top,
            &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
        )
        .map_err(|_| format!("unknown git ref {rev}"))?;
        return Ok(None);
    }
    let text = git(&top, &["show", &spec])?;
    Schema::parse_str(&text)
        .map(Some)
        .map_err(|e| format!("{spec} does not parse: {e}"))
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        String::from_utf8(out.stdout).map_err(|e| e.to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Runs the check and prints its report; fails when any rule is broken.
///
/// # Errors
/// Unreadable inputs, or at least one violation (all are listed).
pub fn run(dir: &Path, against: &str) -> anyhow::Result<()> {
    let report =
        check(dir, against).with_context(|| format!("checking schemas in {}", dir.display()))?;
    for s in &report.skipped {
        eprintln!("note: {s}");
    }
    out(&format!(
        "checked {} subject versions in {}",
        report.compared.len(),
        dir.display()
    ));
    if report.violations.is_empty() {
        out("all schema changes are compatible");
        return Ok(());
    }
    for v in &report.violations {
        eprintln!("INCOMPATIBLE {v}");
    }
    anyhow::bail!("{} incompatible schema change(s)", report.violations.len())
}

/// Registers every catalog subject's working-tree schema with an HTTP registry.
/// Idempotent: a schema the registry already holds keeps its id.
///
/// # Errors
/// Unreadable inputs, or the first registry error (it names the URL and the reason).
pub fn register(dir: &Path, registry: &eventbus_schemas::http::HttpRegistry) -> anyhow::Result<()> {
    let catalog = Catalog::load(&dir.join("topics.toml"))?;
    for topic in &catalog.topics {
        let path = dir.join(&topic.schema);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let id = registry
            .register(&topic.subject, &text)
            .with_context(|| format!("registering {}", topic.subject))?;
        out(&format!("{:<40} id {id}", topic.subject));
    }
    Ok(())
}

/// Prints a line; a closed stdout (`| head`) is not an error worth a panic.
fn out(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// `eventbus schemas check|register`.
///
/// # Errors
/// A schema breaks its compatibility mode (check), or the registry refuses one
/// (register).
pub async fn command(command: crate::cli::SchemasCommand) -> anyhow::Result<()> {
    use crate::cli::SchemasCommand;
    match command {
        SchemasCommand::Check { against, dir } => run(&dir, &against),
        SchemasCommand::Register { registry, dir } => {
            // The same [registry] settings and environment as the jobs that decode.
            let mut file = crate::config::JobFile::default();
            file.apply(
                std::env::vars(),
                &crate::config::Overrides {
                    registry: Some(registry),
                    ..crate::config::Overrides::default()
                },
            );
            let client = file
                .registry
                .http()?
                .ok_or_else(|| anyhow::anyhow!("no schema registry URL"))?;
            tokio::task::spawn_blocking(move || register(&dir, &client)).await?
        }
    }
}
