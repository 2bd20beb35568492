//! `eventbus run alerting` refuses a wrong rules file at start-up with an error that
//! names the rule and what is wrong, before it talks to any broker.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::process::Command;

use eventbus_tests::eventbus_bin;

const GOOD: &str = r#"
name = "speeding"
topic = "vehicle.state.v1"
severity = "WARNING"
message = "{vehicle_id} at {speed_kph} km/h"
"#;

/// Runs the job with `rules` (after a `[[rule]]` header) against a broker that is not
/// there; returns its exit success and stderr.
fn start(rules: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("alerting.toml");
    std::fs::write(&cfg, format!("[[rule]]\n{rules}")).expect("write");
    let out = Command::new(eventbus_bin())
        .args(["run", "alerting", "--brokers", "127.0.0.1:9", "--config"])
        .arg(&cfg)
        .env_remove("EVENTBUS_BROKERS")
        .env("RUST_LOG", "error")
        .output()
        .expect("run eventbus");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn refused(rules: &str, needles: &[&str]) {
    let (ok, stderr) = start(rules);
    assert!(!ok, "started with:\n{rules}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in:\n{stderr}");
    }
}

#[test]
fn bad_cel_is_named() {
    refused(
        &format!("{GOOD}when = \"speed_kph >> 120\"\n"),
        &["rule \"speeding\"", "not valid CEL"],
    );
}

#[test]
fn an_unknown_field_is_named() {
    refused(
        &format!("{GOOD}when = \"speed_mph > 120.0\"\n"),
        &["rule \"speeding\"", "\"speed_mph\"", "VehicleState"],
    );
    refused(
        &format!("{GOOD}when = \"position.altitude > 1.0\"\n"),
        &["rule \"speeding\"", "\"position.altitude\""],
    );
}

#[test]
fn an_unknown_topic_is_named() {
    refused(
        &GOOD
            .replace("vehicle.state.v1", "vehicle.state.v9")
            .replace("severity", "when = \"true\"\nseverity"),
        &["rule \"speeding\"", "unknown topic \"vehicle.state.v9\""],
    );
}

#[test]
fn an_unparsable_duration_is_named() {
    refused(
        &format!("{GOOD}when = \"speed_kph > 120.0\"\nfor = \"ten seconds\"\n"),
        &["rule \"speeding\"", "for = \"ten seconds\""],
    );
    refused(
        &format!("{GOOD}when = \"speed_kph > 120.0\"\ncooldown = \"1 fortnight-ish\"\n"),
        &["rule \"speeding\"", "cooldown"],
    );
}

#[test]
fn a_file_that_does_not_parse_is_named() {
    refused(
        "name = \"x\"\nseverity = \"LOUD\"\n",
        &["alerting.toml", "LOUD"],
    );
}
