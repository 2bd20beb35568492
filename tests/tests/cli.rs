//! The `eventbus` binary's handling of bad input: every error names what is wrong.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::process::Command;

use eventbus_tests::eventbus_bin;

fn run(args: &[&str], config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("job.toml");
    std::fs::write(&path, config).expect("write");
    let out = Command::new(eventbus_bin())
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_remove("EVENTBUS_BROKERS")
        .output()
        .expect("run eventbus");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_config_key_is_named_and_fails() {
    let (ok, err) = run(
        &["run", "mirror"],
        "[source]\ngroup_id = \"g\"\ntopics = [\"a.b.v1\"]\ncommit_intervall_ms = 5\n[mirror]\noutput = \"c.d.v1\"\n",
    );
    assert!(!ok);
    assert!(err.contains("commit_intervall_ms"), "{err}");
}

#[test]
fn missing_brokers_are_named() {
    let (ok, err) = run(
        &["run", "mirror"],
        "[source]\ngroup_id = \"g\"\ntopics = [\"a.b.v1\"]\n[mirror]\noutput = \"c.d.v1\"\n",
    );
    assert!(!ok);
    assert!(err.contains("bootstrap.servers"), "{err}");
    for job in ["warehouse", "dlq-processor"] {
        let (ok, err) = run(
            &["run", job],
            "[source]\ngroup_id = \"g\"\ntopics = [\"vehicle.state.v1\"]\n",
        );
        assert!(!ok, "{job}");
        let last = err.lines().last().unwrap_or_default();
        // Named before anything is started: not found out by a later client, after its
        // metadata timeout (the warehouse's dead-letter producer, 30 s later, before).
        assert!(
            last.contains("no brokers given") && !last.contains("dead-letter producer"),
            "{job}: {last}"
        );
    }
}

/// `eventbus` with `args`, run in `dir`, without a broker in its environment: whether it
/// succeeded, its stdout and its stderr.
fn run_in(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(eventbus_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("EVENTBUS_BROKERS")
        .output()
        .expect("run eventbus");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_catalog_commands_work_outside_a_checkout_and_name_a_missing_catalog_once() {
    let elsewhere = tempfile::tempdir().expect("tempdir");
    // No schemas/topics.toml here: the catalog eventbus was built from is read.
    let (ok, out, err) = run_in(elsewhere.path(), &["topics", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains("vehicle.state.v1"), "{out}");

    let missing = elsewhere.path().join("nope").join("topics.toml");
    let (ok, _, err) = run_in(
        elsewhere.path(),
        &[
            "topics",
            "list",
            "--catalog",
            missing.to_str().expect("utf-8"),
        ],
    );
    assert!(!ok);
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {err}"));
    assert!(line.contains(&missing.display().to_string()), "{line}");
    // The cause is said once, not once per error that carries it.
    assert_eq!(line.matches("os error 2").count(), 1, "{line}");
}

#[test]
fn the_demo_reports_json_with_nothing_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(eventbus_bin())
        .args(["demo", "--messages", "5000", "--partitions", "6", "--json"])
        .args(["--dead-letters", "5000"])
        .arg("--warehouse-root")
        .arg(dir.path())
        .output()
        .expect("run demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in [
        "produced",
        "consumed",
        "committed",
        "lost",
        "duplicated",
        "elapsed",
        "records_per_sec",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    // 5000 vehicle states, plus one fleet operation per 10 and one emergency per 20.
    assert_eq!(v["produced"], 5750);
    assert_eq!(v["consumed"], 5750);
    assert_eq!(v["committed"], 5750);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["duplicated"], 0);
    // The warehouse stage wrote every vehicle state into the table once.
    assert_eq!(v["warehouse_rows"], 5000);
    let table = v["warehouse_table"].as_str().expect("table path");
    assert!(
        std::path::Path::new(table)
            .join("_eventbus/commits")
            .is_dir()
    );
    // The dead-letter stage: 1% poison; every good record and every fixed one delivered.
    let d = &v["dead_letters"];
    assert_eq!(d["produced"], 5000);
    assert_eq!(d["poison"], 50);
    assert_eq!(d["fixed"], 16, "{d}");
    assert_eq!(
        d["delivered"].as_u64(),
        Some(d["good"].as_u64().unwrap() + 16),
        "{d}"
    );
    for category in ["decode_error", "schema_unknown", "validation"] {
        assert!(d["categories"][category].as_u64().unwrap_or(0) > 0, "{d}");
    }
    assert!(
        d["replayed"].as_u64().unwrap() > 0,
        "the processor replayed the outage's letters: {d}"
    );
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .status()
        .expect("git")
        .success();
    assert!(ok, "git {args:?}");
}

#[test]
fn schemas_check_rejects_an_incompatible_change_naming_subject_mode_and_field() {
    let repo = tempfile::tempdir().expect("tempdir");
    let dir = repo.path().join("schemas");
    std::fs::create_dir(&dir).expect("mkdir");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    for entry in std::fs::read_dir(&src).expect("schemas dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.ends_with(".avsc") || name.ends_with(".toml") && name != "Cargo.toml" {
            std::fs::copy(&path, dir.join(&name)).expect("copy");
        }
    }
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-qm", "v1"]);
    let check = || {
        Command::new(eventbus_bin())
            .args(["schemas", "check", "--dir"])
            .arg(&dir)
            .output()
            .expect("run eventbus")
    };
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A compatible change: an optional field with a default.
    let path = dir.join("VehicleState.avsc");
    let original = std::fs::read_to_string(&path).expect("read");
    let with = |field: &str| {
        original.replacen("\"fields\": [", &format!("\"fields\": [\n    {field},"), 1)
    };
    std::fs::write(&path, with(r#"{"name": "cabin_temp_c", "type": ["null", "float"], "default": null, "doc": "Cabin temperature."}"#)).expect("write");
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An incompatible one under BACKWARD: a required field new readers cannot fill.
    std::fs::write(
        &path,
        with(r#"{"name": "depot_id", "type": "string", "doc": "Home depot."}"#),
    )
    .expect("write");
    let out = check();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for needle in ["vehicle.state.v1-value", "BACKWARD", "depot_id", "HEAD"] {
        assert!(err.contains(needle), "missing {needle} in: {err}");
    }
}

#[test]
fn schemas_register_registers_every_subject_once_and_is_idempotent() {
    // "Basic " + base64("ops:secret")
    let registry = eventbus_tests::registry::RegistryDouble::start("Basic b3BzOnNlY3JldA==", 0);
    let schemas = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let register = |password: &str| {
        Command::new(eventbus_bin())
            .args(["schemas", "register", "--registry", &registry.url, "--dir"])
            .arg(&schemas)
            .env("EVENTBUS_REGISTRY_USER", "ops")
            .env("EVENTBUS_REGISTRY_PASSWORD", password)
            .output()
            .expect("run eventbus")
    };
    let first = register("secret");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = register("secret");
    assert!(second.status.success());
    assert_eq!(first.stdout, second.stdout, "the same ids both times");

    let catalog = eventbus_schemas::Catalog::load(&schemas.join("topics.toml")).expect("catalog");
    let subjects = registry.subjects.lock().unwrap().clone();
    assert_eq!(subjects.len(), catalog.topics.len());
    for t in &catalog.topics {
        assert_eq!(
            subjects.get(&t.subject).map(Vec::len),
            Some(1),
            "{}",
            t.subject
        );
        let printed = String::from_utf8_lossy(&first.stdout).into_owned();
        assert!(printed.contains(&t.subject), "{printed}");
    }

    // Wrong credentials: a non-zero exit naming the subject and the refusal.
    let refused = register("wrong");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("registering") && err.contains("401"), "{err}");
}

#[test]
fn bench_measures_the_warehouse_job_against_the_bare_consumer() {
    // Figures are not asserted (a benchmark reports them); the run must read every
    // record on both sides and report both figures and their ratios.
    let out = Command::new(eventbus_bin())
        .args([
            "bench",
            "--job",
            "warehouse",
            "--messages",
            "3000",
            "--partitions",
            "4",
            "--rounds",
            "1",
            "--json",
        ])
        .output()
        .expect("run bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["job"], "warehouse");
    assert_eq!(v["messages"], 3000);
    for key in [
        "ratio",
        "bare_records_per_sec",
        "executor_records_per_sec",
        "executor_cpu_s_per_million",
    ] {
        assert!(
            v[key].as_f64().is_some_and(|x| x.is_finite() && x > 0.0),
            "{key} in {v}"
        );
    }
    // CPU is counted in 10 ms ticks: a run this small may show none for the bare side.
    assert!(v.get("cpu_ratio").is_some(), "{v}");
    // The warehouse run also costs decoding and encoding alone, over the same records.
    assert!(
        v["encode_cpu_s_per_million"]
            .as_f64()
            .is_some_and(|x| x.is_finite() && x >= 0.0),
        "encode_cpu_s_per_million in {v}"
    );
    assert!(v.get("encode_floor_ratio").is_some(), "{v}");
    assert!(v.get("cpu_over_floor").is_some(), "{v}");
}
