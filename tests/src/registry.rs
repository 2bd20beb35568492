//! A stand-in for a Confluent schema registry, holding subjects and schemas in memory on a
//! local port. It answers as the real one does for what eventbus asks of it:
//!
//! - `POST /subjects/{s}/versions`: the same schema text keeps its id; a new one gets the
//!   next id after `base`;
//! - `GET /schemas/ids/{id}` and `GET /subjects/{s}/versions/latest`, 404 when unknown;
//!
//! and checks basic auth. Ids put in `failing` answer 503, as a registry that is down.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

/// The registry double; it serves until the test process ends.
pub struct RegistryDouble {
    /// Its base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    /// Subject → ids of its versions, in registration order.
    pub subjects: Arc<Mutex<BTreeMap<String, Vec<u32>>>>,
    /// Ids whose lookups answer 503.
    pub failing: Arc<Mutex<BTreeSet<u32>>>,
    /// `GET /schemas/ids/{id}` requests seen, by id.
    pub lookups: Arc<Mutex<BTreeMap<u32, u32>>>,
}

#[derive(Default)]
struct State {
    ids: HashMap<String, u32>,
    texts: BTreeMap<u32, String>,
}

impl RegistryDouble {
    /// Starts the double. Requests must carry `Authorization: <expected_auth>` (empty:
    /// none); new ids are `base + 1`, `base + 2`, ...
    pub fn start(expected_auth: &'static str, base: u32) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let double = Self {
            url,
            subjects: Arc::default(),
            failing: Arc::default(),
            lookups: Arc::default(),
        };
        let (subjects, failing, lookups) = (
            double.subjects.clone(),
            double.failing.clone(),
            double.lookups.clone(),
        );
        std::thread::spawn(move || {
            let mut state = State::default();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some((method, path, auth, body)) = read_request(&stream) else {
                    continue;
                };
                let (status, answer) = if auth != expected_auth {
                    (401, error(401, "Unauthorized"))
                } else if let Some(subject) = path
                    .strip_prefix("/subjects/")
                    .and_then(|p| p.strip_suffix("/versions"))
                    .filter(|_| method == "POST")
                {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let text = v["schema"].as_str().unwrap().to_owned();
                    let next = base + u32::try_from(state.ids.len()).unwrap() + 1;
                    let id = *state.ids.entry(text.clone()).or_insert(next);
                    state.texts.insert(id, text);
                    let mut subjects = subjects.lock().unwrap();
                    let versions = subjects.entry(subject.to_owned()).or_default();
                    if !versions.contains(&id) {
                        versions.push(id);
                    }
                    (200, serde_json::json!({ "id": id }).to_string())
                } else if let Some(id) = path
                    .strip_prefix("/schemas/ids/")
                    .and_then(|id| id.parse::<u32>().ok())
                {
                    *lookups.lock().unwrap().entry(id).or_default() += 1;
                    if failing.lock().unwrap().contains(&id) {
                        (503, error(50302, "the registry is down"))
                    } else {
                        match state.texts.get(&id) {
                            Some(text) => (200, serde_json::json!({ "schema": text }).to_string()),
                            None => (404, error(40403, "Schema not found")),
                        }
                    }
                } else if let Some(subject) = path
                    .strip_prefix("/subjects/")
                    .and_then(|p| p.strip_suffix("/versions/latest"))
                {
                    let subjects = subjects.lock().unwrap();
                    match subjects
                        .get(subject)
                        .and_then(|v| v.last().map(|id| (v.len(), id)))
                    {
                        Some((version, id)) => (
                            200,
                            serde_json::json!({
                                "subject": subject,
                                "version": version,
                                "id": id,
                                "schema": state.texts[id],
                            })
                            .to_string(),
                        ),
                        None => (404, error(40401, "Subject not found")),
                    }
                } else {
                    (404, error(404, "no route"))
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        double
    }
}

impl RegistryDouble {
    /// A client of the double that sends `user` and `password`.
    pub fn client(&self, user: &str, password: &str) -> eventbus_schemas::http::HttpRegistry {
        let mut config = eventbus_schemas::http::HttpRegistryConfig::new(self.url.clone());
        config.basic_auth = Some((user.to_owned(), password.to_owned()));
        eventbus_schemas::http::HttpRegistry::new(config)
    }
}

fn error(code: u32, message: &str) -> String {
    serde_json::json!({ "error_code": code, "message": message }).to_string()
}

/// Method, path, `Authorization` value and body of one HTTP/1.1 request.
fn read_request(stream: &std::net::TcpStream) -> Option<(String, String, String, Vec<u8>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut words = line.split_whitespace();
    let method = words.next()?.to_owned();
    let path = words.next()?.to_owned();
    let (mut len, mut auth) = (0usize, String::new());
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().ok()?,
            "authorization" => v.trim().clone_into(&mut auth),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some((method, path, auth, body))
}
