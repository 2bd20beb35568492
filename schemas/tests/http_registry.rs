//! The Confluent REST client against a local HTTP test server.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus_runtime::{Classify, ErrorClass};
use eventbus_schemas::events::VehicleState;
use eventbus_schemas::http::{HttpRegistry, HttpRegistryConfig, RegistryError};
use eventbus_schemas::{Decoder, bundled_dir};

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    auth: Option<String>,
    content_type: Option<String>,
    body: String,
}

type Handler = dyn Fn(&Seen, usize) -> Option<(u16, String)> + Send + Sync;

/// A one-connection-per-request HTTP/1.1 server on 127.0.0.1. The handler gets each
/// request and its 0-based number and returns the status and JSON body, or `None` to
/// never answer (a hung registry).
struct Server {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(handler: Box<Handler>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line.is_empty() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or("").to_owned(),
                    parts.next().unwrap_or("").to_owned(),
                );
                let (mut len, mut auth, mut content_type) = (0usize, None, None);
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap();
                    match k.to_ascii_lowercase().as_str() {
                        "content-length" => len = v.trim().parse().unwrap(),
                        "authorization" => auth = Some(v.trim().to_owned()),
                        "content-type" => content_type = Some(v.trim().to_owned()),
                        _ => {}
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let req = Seen {
                    method,
                    path,
                    auth,
                    content_type,
                    body: String::from_utf8(body).unwrap(),
                };
                log.lock().unwrap().push(req.clone());
                match handler(&req, n) {
                    Some((status, body)) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    None => std::thread::sleep(Duration::from_secs(30)),
                }
            }
        });
        Self { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn vehicle_state_schema() -> String {
    std::fs::read_to_string(bundled_dir().join("VehicleState.avsc")).unwrap()
}

fn config(url: &str) -> HttpRegistryConfig {
    let mut c = HttpRegistryConfig::new(url);
    c.backoff = Duration::from_millis(10);
    c.timeout = Duration::from_secs(2);
    c
}

#[test]
fn schemas_by_id_are_fetched_once_and_decode_independent_bytes() {
    let schema = vehicle_state_schema();
    let body = serde_json::json!({ "schema": schema }).to_string();
    let server = Server::start(Box::new(move |req, _| match req.path.as_str() {
        "/schemas/ids/1" => Some((200, body.clone())),
        _ => Some((
            404,
            r#"{"error_code":40403,"message":"Schema not found"}"#.to_owned(),
        )),
    }));
    let registry = HttpRegistry::new(config(&server.url));
    let bytes = std::fs::read(bundled_dir().join("testdata/vehicle_state_v1.bin")).unwrap();
    let decoder = Decoder::new(registry);
    for _ in 0..3 {
        let event: VehicleState = decoder.decode_typed(&bytes, None).expect("decodes");
        assert_eq!(event.vehicle_id, "veh-0042");
    }
    let gets: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|r| r.path == "/schemas/ids/1")
        .collect();
    assert_eq!(gets.len(), 1, "cached by id");
    assert_eq!(gets[0].method, "GET");
}

#[test]
fn register_lookup_compatibility_and_config_speak_the_confluent_api_with_basic_auth() {
    let server = Server::start(Box::new(|req, _| {
        Some(match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/subjects/vehicle.state.v1-value/versions") => {
                (200, r#"{"id":17}"#.to_owned())
            }
            ("POST", "/subjects/vehicle.state.v1-value") => (
                200,
                r#"{"subject":"s","version":1,"id":17,"schema":"\"string\""}"#.to_owned(),
            ),
            ("POST", "/compatibility/subjects/vehicle.state.v1-value/versions/latest") => {
                (200, r#"{"is_compatible":false}"#.to_owned())
            }
            ("GET", "/config/vehicle.state.v1-value") => {
                (200, r#"{"compatibilityLevel":"FULL"}"#.to_owned())
            }
            _ => (
                404,
                r#"{"error_code":40401,"message":"Subject not found"}"#.to_owned(),
            ),
        })
    }));
    let mut c = config(&server.url);
    c.basic_auth = Some(("svc".into(), "s3cret".into()));
    let registry = HttpRegistry::new(c);
    let schema = vehicle_state_schema();
    let subject = "vehicle.state.v1-value";
    assert_eq!(registry.register(subject, &schema).unwrap(), 17);
    assert_eq!(registry.lookup(subject, &schema).unwrap(), Some(17));
    assert_eq!(registry.lookup("other-value", &schema).unwrap(), None);
    assert!(!registry.is_compatible(subject, &schema).unwrap());
    assert!(
        registry.is_compatible("new-value", &schema).unwrap(),
        "no version yet: anything goes"
    );
    assert_eq!(
        registry.compatibility(subject).unwrap().as_deref(),
        Some("FULL")
    );

    let seen = server.seen();
    let register = &seen[0];
    assert_eq!(
        register.content_type.as_deref(),
        Some("application/vnd.schemaregistry.v1+json")
    );
    let sent: serde_json::Value = serde_json::from_str(&register.body).unwrap();
    assert_eq!(sent["schema"].as_str(), Some(schema.as_str()));
    // "svc:s3cret" in base64.
    assert!(
        seen.iter()
            .all(|r| r.auth.as_deref() == Some("Basic c3ZjOnMzY3JldA=="))
    );
}

#[test]
fn server_errors_are_retried_then_reported_as_transient() {
    let flaky = Server::start(Box::new(|_, n| {
        Some(if n < 2 {
            (503, "busy".to_owned())
        } else {
            (200, r#"{"id":5}"#.to_owned())
        })
    }));
    assert_eq!(
        HttpRegistry::new(config(&flaky.url))
            .register("s-value", "\"string\"")
            .unwrap(),
        5
    );
    assert_eq!(flaky.seen().len(), 3);

    let down = Server::start(Box::new(|_, _| Some((500, "boom".to_owned()))));
    let err = HttpRegistry::new(config(&down.url))
        .register("s-value", "\"string\"")
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unavailable { attempts: 4, .. }),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(down.seen().len(), 4);
}

#[test]
fn refusals_are_permanent_or_fatal_and_name_the_reason() {
    let server = Server::start(Box::new(|req, _| {
        Some(if req.path.starts_with("/subjects/locked") {
            (
                401,
                r#"{"error_code":401,"message":"Unauthorized"}"#.to_owned(),
            )
        } else {
            (
                409,
                r#"{"error_code":409,"message":"Schema being registered is incompatible"}"#
                    .to_owned(),
            )
        })
    }));
    let registry = HttpRegistry::new(config(&server.url));
    let err = registry.register("s-value", "\"string\"").unwrap_err();
    assert!(err.to_string().contains("incompatible"), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    let err = registry.register("locked-value", "\"string\"").unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
}

#[test]
fn a_hung_registry_fails_within_the_timeout() {
    let server = Server::start(Box::new(|_, _| None));
    let mut c = config(&server.url);
    c.timeout = Duration::from_millis(300);
    c.retries = 1;
    let started = Instant::now();
    let err = HttpRegistry::new(c).fetch_schema(9).unwrap_err();
    assert!(
        matches!(err, RegistryError::Unavailable { attempts: 2, .. }),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded, not a hang"
    );
}

#[test]
fn a_decoder_tells_an_unknown_id_from_an_unreachable_registry() {
    let bytes = std::fs::read(bundled_dir().join("testdata/vehicle_state_v1.bin")).unwrap();
    let origin = eventbus_runtime::Origin {
        topic: "vehicle.state.v1".into(),
        partition: 3,
        offset: 77,
    };

    // The registry answers "no such schema": the bytes are bad, Permanent.
    let knows_nothing = Server::start(Box::new(|_, _| {
        Some((
            404,
            r#"{"error_code":40403,"message":"Schema not found"}"#.to_owned(),
        ))
    }));
    let err = Decoder::new(HttpRegistry::new(config(&knows_nothing.url)))
        .decode(&bytes, Some(&origin))
        .unwrap_err();
    assert!(
        matches!(
            err,
            eventbus_schemas::DecodeError::UnknownSchema { id: 1, .. }
        ),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Permanent);

    // The registry keeps failing: nothing is known about the bytes, Transient, and the
    // error still names the record.
    let down = Server::start(Box::new(|_, _| Some((503, "busy".to_owned()))));
    let err = Decoder::new(HttpRegistry::new(config(&down.url)))
        .decode(&bytes, Some(&origin))
        .unwrap_err();
    assert!(
        matches!(err, eventbus_schemas::DecodeError::Registry { id: 1, .. }),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Transient);
    let text = err.to_string();
    assert!(
        text.contains("vehicle.state.v1") && text.contains("77"),
        "{text}"
    );
}

/// A registry lookup made on a runtime worker (a decoding operator meeting a new schema
/// id) must not stop that worker's timers while it waits on HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_slow_registry_lookup_on_a_worker_does_not_freeze_timers() {
    let body = serde_json::json!({ "schema": vehicle_state_schema() }).to_string();
    let server = Server::start(Box::new(move |_, _| {
        std::thread::sleep(Duration::from_millis(1500));
        Some((200, body.clone()))
    }));
    let registry = Arc::new(HttpRegistry::new(config(&server.url)));
    let timer = tokio::spawn(async {
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        start.elapsed()
    });
    // Both tasks run on the one worker; the lookup blocks it for 1.5 s.
    let lookup = tokio::spawn(async move { registry.fetch_schema(1) });
    let fired_after = timer.await.expect("timer task");
    let schema = lookup.await.expect("lookup task").expect("lookup");
    assert!(schema.is_some());
    assert!(
        fired_after < Duration::from_millis(1000),
        "a 50 ms timer fired after {fired_after:?}: the lookup froze the worker"
    );
}
