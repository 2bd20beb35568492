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

/// Where the registry is and how to talk to it. Its `Debug` output never shows the
/// password or the token.
#[derive(Clone)]
pub struct HttpRegistryConfig {
    /// Base URL, e.g. `http://127.0.0.1:8081`.
    pub url: String,
    /// Basic-auth user and password, if the registry wants them.
    pub basic_auth: Option<(String, String)>,
    /// A bearer token sent as `Authorization: Bearer <token>` (instead of basic auth).
    pub bearer_token: Option<String>,
    /// Certificate authorities an `https://` registry is checked against, instead of
    /// the built-in web roots; see [`HttpRegistryConfig::trust_pem`].
    pub roots: Option<Vec<ureq::tls::Certificate<'static>>>,
    /// A client certificate chain and its key, for registries that ask for one; see
    /// [`HttpRegistryConfig::client_pem`].
    pub client_cert: Option<ureq::tls::ClientCert>,
    /// Bound on one request, connect included. Default 10 s.
    pub timeout: Duration,
    /// Retries after a 5xx answer or a transport failure. Default 3.
    pub retries: u32,
    /// First backoff between retries, doubled each time. Default 100 ms.
    pub backoff: Duration,
}

impl std::fmt::Debug for HttpRegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRegistryConfig")
            .field("url", &self.url)
            .field("user", &self.basic_auth.as_ref().map(|(u, _)| u))
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| "***"))
            .field("roots", &self.roots.as_ref().map(Vec::len))
            .field("client_cert", &self.client_cert.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpRegistryConfig {
    /// A registry at `url` with default timeout and retries. Credentials written into the
    /// URL (`https://user:password@host`) become basic auth and leave the URL, so that
    /// no error or log line that names the URL shows them.
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        let (url, basic_auth) = split_credentials(url.trim_end_matches('/'));
        Self {
            url,
            basic_auth,
            bearer_token: None,
            roots: None,
            client_cert: None,
            timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_millis(100),
        }
    }

    /// Trusts the certificate authorities in `pem` (one or more PEM certificates)
    /// instead of the built-in web roots. `what` names the source in errors.
    ///
    /// # Errors
    /// [`RegistryError::Tls`] when `pem` holds no certificate.
    pub fn trust_pem(&mut self, what: &str, pem: &[u8]) -> Result<(), RegistryError> {
        let certs = pem_items(what, pem)?
            .into_iter()
            .filter_map(|item| match item {
                ureq::tls::PemItem::Certificate(c) => Some(c),
                _ => None,
            })
            .collect::<Vec<_>>();
        if certs.is_empty() {
            return Err(tls_error(what, "holds no PEM certificate"));
        }
        self.roots = Some(certs);
        Ok(())
    }

    /// Presents the client certificate chain in `cert_pem` with the private key in
    /// `key_pem`. `what` names the source in errors.
    ///
    /// # Errors
    /// [`RegistryError::Tls`] when either holds nothing usable.
    pub fn client_pem(
        &mut self,
        what: &str,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<(), RegistryError> {
        let chain: Vec<_> = pem_items(what, cert_pem)?
            .into_iter()
            .filter_map(|item| match item {
                ureq::tls::PemItem::Certificate(c) => Some(c),
                _ => None,
            })
            .collect();
        if chain.is_empty() {
            return Err(tls_error(
                what,
                "the certificate file holds no PEM certificate",
            ));
        }
        let key = ureq::tls::PrivateKey::from_pem(key_pem)
            .map_err(|_| tls_error(what, "the key file holds no PEM private key"))?;
        self.client_cert = Some(ureq::tls::ClientCert::new_with_certs(&chain, key));
        Ok(())
    }
}

fn tls_error(what: &str, reason: &str) -> RegistryError {
    RegistryError::Tls {
        what: what.to_owned(),
        reason: reason.to_owned(),
    }
}

fn pem_items(what: &str, pem: &[u8]) -> Result<Vec<ureq::tls::PemItem<'static>>, RegistryError> {
    ureq::tls::parse_pem(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(what, &format!("is not PEM: {e}")))
}

/// `scheme://user:password@rest` as `scheme://rest` and the credentials.
fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_owned(), None);
    };
    let (user, password) = rest[..at].split_once(':').unwrap_or((&rest[..at], ""));
    (
        format!("{scheme}://{}", &rest[at + 1..]),
        Some((user.to_owned(), password.to_owned())),
    )
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
        let mut tls = ureq::tls::TlsConfig::builder().client_cert(config.client_cert.clone());
        if let Some(roots) = &config.roots {
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(roots));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            .tls_config(tls.build())
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
        let auth = match (&self.config.bearer_token, &self.config.basic_auth) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Some((u, p))) => {
                Some(format!("Basic {}", base64(format!("{u}:{p}").as_bytes())))
            }
            (None, None) => None,
        };
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
    fn credentials_in_the_url_become_basic_auth_and_leave_the_url() {
        let c = HttpRegistryConfig::new("https://ops:s3cr3t@registry:8081/");
        assert_eq!(c.url, "https://registry:8081");
        assert_eq!(c.basic_auth, Some(("ops".to_owned(), "s3cr3t".to_owned())));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let plain = HttpRegistryConfig::new("http://registry:8081/a@b");
        assert_eq!(plain.url, "http://registry:8081/a@b");
        assert_eq!(plain.basic_auth, None);
    }

    #[test]
    fn pem_without_a_certificate_is_named_as_a_tls_error() {
        let mut c = HttpRegistryConfig::new("https://registry:8081");
        let err = c
            .trust_pem("registry.ca_file /x.pem", b"not a certificate")
            .expect_err("no certificate")
            .to_string();
        assert!(
            err.contains("registry.ca_file /x.pem") && err.contains("TLS"),
            "{err}"
        );
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
