//! A client for the Confluent Schema Registry REST API.
//!
//! Lookups by id are cached forever (an id never changes meaning); 5xx answers and
//! transport failures are retried with exponential backoff, then reported as
//! Transient; 4xx answers other than "not found" are reported as Permanent, and
//! 401/403 as Fatal (bad credentials will not fix themselves).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::Schema;
use serde::Deserialize;

pub use crate::error::RegistryError;
use crate::registry::SchemaRegistry;

/// Where the registry is and how to talk to it.
#[derive(Debug, Clone)]
pub struct HttpRegistryConfig {
    /// Base URL, e.g. `http://127.0.0.1:8081`.
    pub url: String,
    /// Basic-auth user and password, if the registry wants them.
    pub basic_auth: Option<(String, String)>,
    /// Bound on one request, connect included. Default 10 s.
    pub timeout: Duration,
    /// Retries after a 5xx answer or a transport failure. Default 3.
    pub retries: u32,
    /// First backoff between retries, doubled each time. Default 100 ms.
    pub backoff: Duration,
}

impl HttpRegistryConfig {
    /// A registry at `url` with default timeout and retries.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into().trim_end_matches('/').to_owned(),
            basic_auth: None,
            timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_millis(100),
        }
    }
}

/// The Confluent-API registry client.
pub struct HttpRegistry {
    config: HttpRegistryConfig,
    agent: ureq::Agent,
    by_id: RwLock<HashMap<u32, Arc<Schema>>>,
}

impl std::fmt::Debug for HttpRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRegistry")
            .field("url", &self.config.url)
            .finish()
    }
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
}

#[derive(Deserialize)]
struct VersionBody {
    id: u32,
    schema: String,
}

#[derive(Deserialize)]
struct CompatBody {
    is_compatible: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigBody {
    compatibility_level: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: String,
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl HttpRegistry {
    /// A client; nothing is sent until the first request.
    pub fn new(config: HttpRegistryConfig) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            config,
            agent,
            by_id: RwLock::new(HashMap::new()),
        }
    }

    /// The schema registered under `id` (`GET /schemas/ids/{id}`), cached.
    ///
    /// # Errors
    /// [`RegistryError`]; an unknown id is `Ok(None)`.
    pub fn fetch_schema(&self, id: u32) -> Result<Option<Arc<Schema>>, RegistryError> {
        if let Some(s) = self
            .by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(Some(s.clone()));
        }
        let path = format!("/schemas/ids/{id}");
        let Some(body) = self.call_json::<SchemaBody>("GET", &path, None)? else {
            return Ok(None);
        };
        let schema = Arc::new(self.parse(&path, &body.schema)?);
        self.by_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, schema.clone());
        Ok(Some(schema))
    }

    /// The latest version of `subject` (`GET /subjects/{s}/versions/latest`).
    ///
    /// # Errors
    /// [`RegistryError`]; an unknown subject is `Ok(None)`.
    pub fn fetch_latest(&self, subject: &str) -> Result<Option<(u32, Arc<Schema>)>, RegistryError> {
        let path = format!("/subjects/{}/versions/latest", encode_path(subject));
        let Some(body) = self.call_json::<VersionBody>("GET", &path, None)? else {
            return Ok(None);
        };
        let schema = Arc::new(self.parse(&path, &body.schema)?);
        self.by_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(body.id, schema.clone());
        Ok(Some((body.id, schema)))
    }

    /// Registers `schema` under `subject` (`POST /subjects/{s}/versions`) and returns its
    /// id. Idempotent: the registry answers an already registered schema with its id.
    ///
    /// # Errors
    /// [`RegistryError`], e.g. Rejected with 409 for an incompatible schema.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let path = format!("/subjects/{}/versions", encode_path(subject));
        let body = schema_json(schema);
        self.call_json::<IdBody>("POST", &path, Some(body))?
            .map(|b| b.id)
            .ok_or_else(|| RegistryError::BadResponse {
                url: self.url(&path),
                reason: "404 on register".to_owned(),
            })
    }

    /// The id of `schema` under `subject` if registered (`POST /subjects/{s}`).
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<Option<u32>, RegistryError> {
        let path = format!("/subjects/{}", encode_path(subject));
        Ok(self
            .call_json::<IdBody>("POST", &path, Some(schema_json(schema)))?
            .map(|b| b.id))
    }

    /// Whether `schema` may become the next version of `subject` under its mode
    /// (`POST /compatibility/subjects/{s}/versions/latest`). A subject with no version yet
    /// accepts anything.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn is_compatible(&self, subject: &str, schema: &str) -> Result<bool, RegistryError> {
        let path = format!(
            "/compatibility/subjects/{}/versions/latest",
            encode_path(subject)
        );
        Ok(self
            .call_json::<CompatBody>("POST", &path, Some(schema_json(schema)))?
            .is_none_or(|b| b.is_compatible))
    }

    /// The subject's compatibility mode (`GET /config/{s}`), if it has its own.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn compatibility(&self, subject: &str) -> Result<Option<String>, RegistryError> {
        let path = format!("/config/{}", encode_path(subject));
        Ok(self
            .call_json::<ConfigBody>("GET", &path, None)?
            .map(|b| b.compatibility_level))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.url)
    }

    fn parse(&self, path: &str, text: &str) -> Result<Schema, RegistryError> {
        Schema::parse_str(text).map_err(|e| RegistryError::BadResponse {
            url: self.url(path),
            reason: format!("schema does not parse: {e}"),
        })
    }

    /// One request with retries; `Ok(None)` for 404.
    ///
    /// It blocks on HTTP and sleeps between tries. Called on a worker of a multi-thread
    /// tokio runtime (a decoding operator meets a new schema id), it runs through
    /// `block_in_place`, which hands the worker's other tasks and the timers to another
    /// thread meanwhile: on 2 cores, two lookups blocking both workers would otherwise
    /// freeze revoke deadlines and the warehouse's maximum file age.
    fn call_json<T: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Option<T>, RegistryError> {
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.call_json_here(method, path, body))
            }
            _ => self.call_json_here(method, path, body),
        }
    }

    fn call_json_here<T: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Option<T>, RegistryError> {
        let url = self.url(path);
        let mut backoff = self.config.backoff;
        let attempts = self.config.retries + 1;
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.send(method, &url, body.as_deref()) {
                Ok((status, text)) if (200..300).contains(&status) => {
                    return serde_json::from_str(&text).map(Some).map_err(|e| {
                        RegistryError::BadResponse {
                            url: url.clone(),
                            reason: format!("{e} in {text:.200}"),
                        }
                    });
                }
                Ok((404, _)) => return Ok(None),
                Ok((status, text)) if status < 500 => {
                    let message = serde_json::from_str::<ErrorBody>(&text)
                        .map(|b| b.message)
                        .unwrap_or(text);
                    return Err(RegistryError::Rejected {
                        url,
                        status,
                        message,
                    });
                }
                Ok((status, text)) => last = format!("HTTP {status}: {text:.200}"),
                Err(e) => last = e,
            }
            if attempt < attempts {
                tracing::warn!(url = %url, attempt, error = %last, "schema registry request failed; retrying");
                std::thread::sleep(backoff);
                backoff = backoff.saturating_mul(2);
            }
        }
        Err(RegistryError::Unavailable {
            url,
            attempts,
            reason: last,
        })
    }

    fn send(&self, method: &str, url: &str, body: Option<&str>) -> Result<(u16, String), String> {
        let auth = self
            .config
            .basic_auth
            .as_ref()
            .map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
        let result = match (method, body) {
            ("POST", Some(b)) => {
                let mut req = self.agent.post(url).header("Content-Type", CONTENT_TYPE);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(b)
            }
            _ => {
                let mut req = self.agent.get(url).header("Accept", CONTENT_TYPE);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
        };
        let mut resp = result.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        Ok((status, text))
    }
}

impl SchemaRegistry for HttpRegistry {
    fn schema(&self, id: u32) -> Result<Option<Arc<Schema>>, RegistryError> {
        self.fetch_schema(id)
    }

    fn latest(&self, subject: &str) -> Result<Option<(u32, Arc<Schema>)>, RegistryError> {
        self.fetch_latest(subject)
    }
}

fn schema_json(schema: &str) -> String {
    serde_json::json!({ "schema": schema }).to_string()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Standard base64 with padding, for the basic-auth header.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }

    #[test]
    fn subjects_are_escaped_in_paths() {
        assert_eq!(
            encode_path("vehicle.state.v1-value"),
            "vehicle.state.v1-value"
        );
        assert_eq!(encode_path("a/b c"), "a%2Fb%20c");
    }
}
