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
}

#[test]
fn the_demo_reports_json_with_nothing_lost() {
    let out = Command::new(eventbus_bin())
        .args(["demo", "--messages", "5000", "--partitions", "6", "--json"])
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
