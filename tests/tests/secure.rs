//! Secure connections, for real: TLS to tansu through a TLS-terminating proxy (stunnel)
//! with a CA made in the test, SASL/SCRAM logins that tansu checks, the schema registry
//! over HTTPS with basic auth and with a bearer token, and S3 over HTTPS. Every secret
//! used is then looked for in what the processes printed, and must not be there.
//!
//! Each test starts its own tansu (`TANSU_BIN`), advertising the proxy's port, so that
//! every connection a client makes, bootstrap and partition leaders alike, goes through
//! TLS. `make test` installs stunnel4 and runs this file.
#![cfg(feature = "real-broker")]
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use eventbus_jobs::topic_io;
use eventbus_runtime::KafkaProperties;
use eventbus_tests::registry::RegistryDouble;
use eventbus_tests::tls::{TestCa, TlsProxy};
use eventbus_tests::{JobProcess, Tansu, eventbus_bin, free_port, read_table, table_duplicates};

const TOPIC: &str = "vehicle.state.v1";
const DLQ: &str = "vehicle.state.v1.dlq";

/// Runs `eventbus ARGS` with `env`, RUST_LOG=debug so that the logs say as much as they
/// ever do; returns its output.
fn eventbus(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(eventbus_bin())
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "debug")
        .env_remove("EVENTBUS_BROKERS")
        .output()
        .expect("run eventbus")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output, what: &str) -> String {
    let t = text(&out);
    assert!(out.status.success(), "{what} failed:\n{t}");
    t
}

/// Asserts that none of `secrets` occurs in `output` (`what` names it).
fn assert_hidden(secrets: &[&str], output: &str, what: &str) {
    for s in secrets {
        assert!(
            !output.contains(s),
            "the secret {s:?} appears in {what}:\n{output}"
        );
    }
}

/// A broker behind a TLS proxy: tansu on a plain port, advertising the proxy's.
struct SecureBroker {
    // Kept running while the proxy forwards to it.
    _tansu: Tansu,
    proxy: TlsProxy,
}

impl SecureBroker {
    fn start(ca: &TestCa, dir: &Path) -> Self {
        let (plain, tls) = (free_port(), free_port());
        let tansu = Tansu::start_advertising(plain, tls, false);
        let proxy = TlsProxy::start(ca, dir, tls, plain);
        Self {
            _tansu: tansu,
            proxy,
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write");
    path
}

fn kafka_of(toml_kafka: &str) -> KafkaProperties {
    let mut file = eventbus_jobs::config::JobFile::parse(toml_kafka).expect("[kafka]");
    file.kafka.read_secret_files().expect("secret files");
    file.kafka
}

#[test]
fn over_tls_generate_and_the_warehouse_load_every_record_exactly_once_into_s3_over_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "good");
    let broker = SecureBroker::start(&ca, dir.path());
    let s3 = std::env::var("EVENTBUS_TEST_S3")
        .expect("EVENTBUS_TEST_S3 is not set: run through `make test`, which starts S3");
    let s3_port: u16 = s3.rsplit(':').next().unwrap().parse().expect("S3 port");
    let s3_proxy = TlsProxy::start(&ca, dir.path(), free_port(), s3_port);
    let s3_secret = "s3-secret-8f2a71";
    let secret_file = write(dir.path(), "s3-secret", &format!("{s3_secret}\n"));
    let kafka = format!(
        "[kafka]\n\"bootstrap.servers\" = \"{}\"\n\"security.protocol\" = \"ssl\"\n\
         \"ssl.ca.location\" = \"{}\"\n",
        broker.address(),
        ca.ca.display()
    );
    let prefix = eventbus_tests::unique("tls");
    let config_text = format!(
        "{kafka}[source]\ngroup_id = \"tls-warehouse\"\ntopics = [\"{TOPIC}\"]\n\
             commit_interval_ms = 200\n[warehouse]\ntable_root = \"s3://eventbus-test/{prefix}\"\n\
             [warehouse.s3]\nendpoint = \"https://127.0.0.1:{}\"\nregion = \"us-east-1\"\n\
             access_key_id = \"test\"\nsecret_access_key_file = \"{}\"\nca_file = \"{}\"\n",
        s3_proxy.port,
        secret_file.display(),
        ca.ca.display()
    );
    let config = write(dir.path(), "warehouse.toml", &config_text);
    let config_arg = config.to_str().unwrap();
    let over_tls = kafka_of(&kafka);
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(topic_io::create_topics(&over_tls, &[(TOPIC, 6)]))
        .expect("create the topic over TLS");
    let plan = ok(
        eventbus(
            &[
                "topics",
                "plan",
                "--config",
                config_arg,
                "--replication-factor",
                "1",
            ],
            &[],
        ),
        "topics plan over TLS",
    );
    assert!(
        plan.contains("vehicle.state.v1 partitions: 6 -> 50")
            && plan.contains("create vehicle.alerts.v1"),
        "the plan reads the cluster over TLS:\n{plan}"
    );
    let generated = ok(
        eventbus(
            &[
                "generate", "--config", config_arg, "--topic", TOPIC, "--count", "4000",
            ],
            &[],
        ),
        "generate over TLS",
    );
    assert!(
        generated.contains("produced 4000 records"),
        "generate:\n{generated}"
    );
    let ends = topic_io::end_offsets(&over_tls, TOPIC).expect("end offsets over TLS");
    assert_eq!(ends.values().sum::<i64>(), 4000, "{ends:?}");

    let mut run = JobProcess::warehouse(&config, dir.path(), "warehouse", &["--until-caught-up"]);
    let status = run.wait(Duration::from_secs(180));
    let log = std::fs::read_to_string(dir.path().join("warehouse.log")).expect("log");
    assert!(status.success(), "the warehouse over TLS failed:\n{log}");
    assert_hidden(&[s3_secret], &log, "the warehouse log");
    assert_hidden(&[s3_secret], &generated, "generate's output");

    // Read back over plain HTTP, straight from the S3 server: what the job wrote through
    // the TLS proxy.
    let store = eventbus_tests::test_s3_store(&s3);
    let rows = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(read_table(
            &store,
            &object_store::path::Path::from(format!("{prefix}/{TOPIC}")),
        ));
    let (dups, distinct) = table_duplicates(&rows);
    assert_eq!((dups, distinct), (0, 4000), "every record exactly once");

    // The S3 server's certificate checked against another CA: the job stops at start,
    // saying why.
    let other = TestCa::new(dir.path(), "other");
    let wrong_s3 = write(
        dir.path(),
        "wrong-s3.toml",
        &config_text.replace(
            &format!("ca_file = \"{}\"", ca.ca.display()),
            &format!("ca_file = \"{}\"", other.ca.display()),
        ),
    );
    let out = eventbus(
        &[
            "run",
            "warehouse",
            "--config",
            wrong_s3.to_str().unwrap(),
            "--until-caught-up",
        ],
        &[],
    );
    let said = text(&out);
    assert!(
        !out.status.success(),
        "S3 behind an untrusted certificate must fail:\n{said}"
    );
    assert!(
        said.to_lowercase().contains("certificate"),
        "the error names the certificate:\n{said}"
    );
    for (p, end) in &ends {
        let offsets: Vec<i64> = rows
            .iter()
            .filter(|r| r.partition == *p)
            .map(|r| r.offset)
            .collect();
        assert_eq!(offsets.len() as i64, *end, "partition {p} whole");
    }
}

#[test]
fn a_client_with_the_wrong_ca_fails_with_an_error_naming_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, other) = (
        TestCa::new(dir.path(), "good"),
        TestCa::new(dir.path(), "other"),
    );
    let broker = SecureBroker::start(&ca, dir.path());
    let wrong = write(
        dir.path(),
        "wrong.toml",
        &format!(
            "[kafka]\n\"bootstrap.servers\" = \"{}\"\n\"security.protocol\" = \"ssl\"\n\
             \"ssl.ca.location\" = \"{}\"\n[source]\ngroup_id = \"g\"\ntopics = [\"{TOPIC}\"]\n",
            broker.address(),
            other.ca.display()
        ),
    );
    let wrong = wrong.to_str().unwrap();
    let out = eventbus(
        &[
            "generate", "--config", wrong, "--topic", TOPIC, "--count", "1",
        ],
        &[],
    );
    let said = text(&out);
    assert!(!out.status.success(), "a wrong CA must fail:\n{said}");
    let last = said.lines().last().unwrap_or_default();
    assert!(
        last.contains("TLS handshake with the broker failed") && !last.contains("Timed out"),
        "the error names TLS, not a timeout:\n{said}"
    );
    for (what, args) in [
        ("the job", &["run", "warehouse", "--config", wrong][..]),
        (
            "dlq inspect",
            &[
                "dlq",
                "inspect",
                "--config",
                wrong,
                "--topic",
                "vehicle.state.v1.dlq",
            ][..],
        ),
        ("topics plan", &["topics", "plan", "--config", wrong][..]),
    ] {
        let out = eventbus(args, &[]);
        let said = text(&out);
        assert!(
            !out.status.success(),
            "a wrong CA must stop {what}:\n{said}"
        );
        assert!(
            said.lines()
                .last()
                .is_some_and(|l| l.contains("TLS handshake with the broker failed")),
            "the error of {what} names TLS:\n{said}"
        );
    }
}

#[test]
fn sasl_scram_over_tls_logs_in_with_a_password_file_and_a_wrong_password_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "good");
    let (plain, tls) = (free_port(), free_port());
    let mut tansu = Tansu::start_advertising(plain, tls, false);
    let password = "scram-pass-5d9c04";
    let wrong_password = "not-the-pass-33e1b7";
    tansu.create_scram_user("fleet-ops", password);
    tansu.require_authentication();
    let proxy = TlsProxy::start(&ca, dir.path(), tls, plain);
    let password_file = write(dir.path(), "kafka-password", &format!("{password}\n"));
    let kafka = format!(
        "[kafka]\n\"bootstrap.servers\" = \"127.0.0.1:{}\"\n\"security.protocol\" = \"sasl_ssl\"\n\
         \"ssl.ca.location\" = \"{}\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"fleet-ops\"\n",
        proxy.port,
        ca.ca.display()
    );
    let table = dir.path().join("table");
    let config = write(
        dir.path(),
        "job.toml",
        &format!(
            "{kafka}\"sasl.password_file\" = \"{}\"\n[source]\ngroup_id = \"sasl-warehouse\"\n\
             topics = [\"{TOPIC}\"]\ncommit_interval_ms = 200\n[warehouse]\ntable_root = \"{}\"\n",
            password_file.display(),
            table.display()
        ),
    );
    let config_arg = config.to_str().unwrap();
    let mut logged_in = kafka_of(&format!(
        "{kafka}\"sasl.password_file\" = \"{}\"\n",
        password_file.display()
    ));
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(topic_io::create_topics(&logged_in, &[(TOPIC, 3), (DLQ, 1)]))
        .expect("create the topics over SASL_SSL");
    let generated = ok(
        eventbus(
            &[
                "generate", "--config", config_arg, "--topic", TOPIC, "--count", "1500",
            ],
            &[],
        ),
        "generate over SASL_SSL",
    );
    // Records no producer of ours would write: dead-lettered through the DLQ writer,
    // which logs in as the job does.
    let foreign = (0..3).map(|i| (format!("foreign-{i}"), format!("not avro {i}").into_bytes()));
    topic_io::produce(&logged_in, TOPIC, foreign, |_| {}).expect("produce foreign records");
    let mut run = JobProcess::warehouse(&config, dir.path(), "warehouse", &["--until-caught-up"]);
    let status = run.wait(Duration::from_secs(180));
    let log = std::fs::read_to_string(dir.path().join("warehouse.log")).expect("log");
    assert!(
        status.success(),
        "the warehouse over SASL_SSL failed:\n{log}"
    );
    let letters = topic_io::read_all(&logged_in, DLQ, Duration::from_secs(60)).expect("letters");
    assert_eq!(letters.len(), 3, "each foreign record is a dead letter");
    let mut headers = String::new();
    for letter in &letters {
        use rdkafka::message::{Headers as _, Message as _};
        for h in letter.headers().into_iter().flat_map(|hs| hs.iter()) {
            headers.push_str(h.key);
            headers.push('=');
            headers.push_str(&String::from_utf8_lossy(h.value.unwrap_or_default()));
            headers.push('\n');
        }
    }
    assert!(
        headers.contains("vehicle.state.v1"),
        "letters carry their context:\n{headers}"
    );
    let store = object_store::local::LocalFileSystem::new_with_prefix(&table).expect("table");
    let rows = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(read_table(&store, &object_store::path::Path::from(TOPIC)));
    assert_eq!(table_duplicates(&rows), (0, 1500), "every good record once");

    // The password from the environment instead, and wrong: refused by the broker, and
    // said so at once.
    let no_password = write(
        dir.path(),
        "no-password.toml",
        &format!("{kafka}[source]\ngroup_id = \"g\"\ntopics = [\"{TOPIC}\"]\n"),
    );
    let out = eventbus(
        &[
            "generate",
            "--config",
            no_password.to_str().unwrap(),
            "--topic",
            TOPIC,
            "--count",
            "1",
        ],
        &[("EVENTBUS_KAFKA_SASL_PASSWORD", wrong_password)],
    );
    let refused = text(&out);
    assert!(
        !out.status.success(),
        "a wrong password must fail:\n{refused}"
    );
    assert!(
        refused
            .lines()
            .last()
            .is_some_and(|l| l.contains("SASL authentication was refused")),
        "the error names the SASL login:\n{refused}"
    );
    // The right password from the environment works for the library's clients too.
    logged_in.set("sasl.password", password);
    assert_eq!(
        topic_io::end_offsets(&logged_in, TOPIC)
            .expect("ends")
            .values()
            .sum::<i64>(),
        1503,
        "1500 generated and 3 foreign records"
    );
    let help = ok(
        eventbus(
            &["run", "--help"],
            &[
                ("EVENTBUS_KAFKA_SASL_PASSWORD", password),
                ("EVENTBUS_REGISTRY_PASSWORD", password),
            ],
        ),
        "run --help",
    );
    let register_help = ok(
        eventbus(
            &["schemas", "register", "--help"],
            &[(
                "EVENTBUS_REGISTRY_URL",
                &format!("https://ops:{password}@registry:8081"),
            )],
        ),
        "schemas register --help",
    );
    let checked = ok(
        eventbus(
            &["--check", "run", "warehouse", "--config", config_arg],
            &[],
        ),
        "--check",
    );
    for (what, output) in [
        ("generate's output", &generated),
        ("the dead letters' headers", &headers),
        ("the warehouse log", &log),
        ("the refused run's output", &refused),
        ("--help", &help),
        ("schemas register --help", &register_help),
        ("--check", &checked),
    ] {
        assert_hidden(&[password, wrong_password], output, what);
    }
}

#[test]
fn the_registry_client_talks_https_with_a_test_ca_with_basic_auth_and_with_a_bearer_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, other) = (
        TestCa::new(dir.path(), "good"),
        TestCa::new(dir.path(), "other"),
    );
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let schemas = schemas.to_str().unwrap();
    let port_of = |url: &str| -> u16 { url.rsplit(':').next().unwrap().parse().unwrap() };

    // Basic auth, the password from a file. "registry-user:basic-pass-61f0" in base64.
    let basic = RegistryDouble::start("Basic cmVnaXN0cnktdXNlcjpiYXNpYy1wYXNzLTYxZjA=", 100);
    let basic_proxy = TlsProxy::start(&ca, dir.path(), free_port(), port_of(&basic.url));
    let password_file = write(dir.path(), "registry-password", "basic-pass-61f0\n");
    let url = format!("https://127.0.0.1:{}", basic_proxy.port);
    let ca_file = ca.ca.to_str().unwrap();
    let registered = ok(
        eventbus(
            &["schemas", "register", "--registry", &url, "--dir", schemas],
            &[
                ("EVENTBUS_REGISTRY_CA_FILE", ca_file),
                ("EVENTBUS_REGISTRY_USER", "registry-user"),
                (
                    "EVENTBUS_REGISTRY_PASSWORD_FILE",
                    password_file.to_str().unwrap(),
                ),
            ],
        ),
        "schemas register over HTTPS with basic auth",
    );
    assert!(
        basic
            .subjects
            .lock()
            .unwrap()
            .contains_key("vehicle.state.v1-value"),
        "registered:\n{registered}"
    );

    // A bearer token, through the library's own configuration.
    let bearer = RegistryDouble::start("Bearer token-7a3e9c", 200);
    let bearer_proxy = TlsProxy::start(&ca, dir.path(), free_port(), port_of(&bearer.url));
    let bearer_url = format!("https://127.0.0.1:{}", bearer_proxy.port);
    let registry = eventbus_jobs::config::JobFile::parse(&format!(
        "[registry]\nurl = \"{bearer_url}\"\ntoken = \"token-7a3e9c\"\nca_file = \"{ca_file}\"\n"
    ))
    .expect("[registry]")
    .registry;
    assert!(!format!("{registry:?}").contains("token-7a3e9c"));
    let client = registry.http().expect("client").expect("an HTTP registry");
    let schema = eventbus_tests::vehicle_state_json();
    let id = client
        .register("vehicle.state.v1-value", &schema)
        .expect("register over HTTPS with a bearer token");
    assert_eq!(id, 201);
    assert!(
        client.fetch_schema(id).expect("lookup").is_some(),
        "the schema reads back by id"
    );

    // A registry that asks for a client certificate: refused without one, served with
    // the one cert_file and key_file name.
    let mutual =
        TlsProxy::start_requiring_client_certs(&ca, dir.path(), free_port(), port_of(&bearer.url));
    let (cert, key) = ca.client_cert(dir.path(), "registry");
    let section = |client: &str| {
        eventbus_jobs::config::JobFile::parse(&format!(
            "[registry]\nurl = \"https://127.0.0.1:{}\"\ntoken = \"token-7a3e9c\"\n\
             ca_file = \"{ca_file}\"\n{client}",
            mutual.port
        ))
        .expect("[registry]")
        .registry
    };
    let anonymous = section("").http().expect("client").expect("HTTP");
    assert!(
        anonymous.fetch_schema(id).is_err(),
        "a registry that wants a client certificate refuses a client without one"
    );
    let with_cert = section(&format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    ))
    .http()
    .expect("client")
    .expect("HTTP");
    assert!(
        with_cert
            .fetch_schema(id)
            .expect("lookup with a client certificate")
            .is_some(),
        "the schema reads back over mutual TLS"
    );

    // The wrong CA: refused, named as a certificate problem; the token stays hidden.
    let refused = eventbus(
        &[
            "schemas",
            "register",
            "--registry",
            &bearer_url,
            "--dir",
            schemas,
        ],
        &[
            ("EVENTBUS_REGISTRY_CA_FILE", other.ca.to_str().unwrap()),
            ("EVENTBUS_REGISTRY_TOKEN", "token-7a3e9c"),
        ],
    );
    let said = text(&refused);
    assert!(!refused.status.success(), "a wrong CA must fail:\n{said}");
    assert!(
        said.to_lowercase().contains("certificate"),
        "the error names the certificate:\n{said}"
    );
    assert_hidden(&["token-7a3e9c"], &said, "the refused run's output");
    assert_hidden(&["basic-pass-61f0"], &registered, "register's output");
}
