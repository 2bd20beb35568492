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
    assert_eq!(v["produced"], 5000);
    assert_eq!(v["consumed"], 5000);
    assert_eq!(v["committed"], 5000);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["duplicated"], 0);
}
