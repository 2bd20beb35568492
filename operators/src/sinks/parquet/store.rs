//! Object-store access: opening the table root, and store errors worded for the
//! operator.

use std::sync::Arc;

use eventbus_runtime::SinkError;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use super::{S3Config, flush_error};

/// Opens the object store a table root names, and the path of the root inside it.
///
/// # Errors
/// The URL is not a path, `file://` or `s3://` URL, or the store cannot be built.
pub fn open_store(
    table_root: &str,
    s3: &S3Config,
) -> Result<(Arc<dyn ObjectStore>, Path), SinkError> {
    let bad = |reason: String| flush_error(format!("table root {table_root:?}: {reason}"));
    if let Some(rest) = table_root.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket in the s3:// URL".into()));
        }
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        // First: client options replace those set before them (allow-http below).
        let ca_file = s3
            .ca_file
            .clone()
            .or_else(|| std::env::var("AWS_CA_BUNDLE").ok());
        if let Some(path) = ca_file {
            let pem = std::fs::read(&path).map_err(|e| {
                bad(format!(
                    "warehouse.s3.ca_file: cannot read the file {path:?}: {e}"
                ))
            })?;
            let certificates = object_store::Certificate::from_pem_bundle(&pem).map_err(|e| {
                bad(format!(
                    "warehouse.s3.ca_file {path:?} holds no PEM certificate: {e}"
                ))
            })?;
            let options = certificates
                .into_iter()
                .fold(object_store::ClientOptions::new(), |o, c| {
                    o.with_root_certificate(c)
                });
            b = b.with_client_options(options);
        }
        if let Some(e) = &s3.endpoint {
            b = b.with_endpoint(e);
        }
        // The endpoint as the builder resolved it: from the config, `AWS_ENDPOINT_URL`
        // or `AWS_ENDPOINT`. A plain-http endpoint is a local or private server.
        let endpoint = b
            .get_config_value(&object_store::aws::AmazonS3ConfigKey::Endpoint)
            .unwrap_or_default();
        if endpoint.starts_with("http://") {
            b = b.with_allow_http(true);
        }
        if let Some(r) = &s3.region {
            b = b.with_region(r);
        }
        if let Some(k) = &s3.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &s3.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        if let Some(path) = &s3.secret_access_key_file {
            let key =
                eventbus_runtime::read_secret_file("warehouse.s3.secret_access_key_file", path)
                    .map_err(|e| bad(e.to_string()))?;
            b = b.with_secret_access_key(key);
        }
        let store = b.build().map_err(|e| bad(e.to_string()))?;
        return Ok((Arc::new(store), Path::from(prefix)));
    }
    let dir = table_root.strip_prefix("file://").unwrap_or(table_root);
    if dir.contains("://") {
        return Err(bad(
            "only local paths, file:// and s3:// are supported".into()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| bad(e.to_string()))?;
    Ok((Arc::new(store), Path::default()))
}

/// What a store does with a second create-only put of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConditionalPuts {
    /// It refuses it: of two writers racing to create a commit entry, one wins.
    Honoured,
    /// It overwrites the object (an `If-None-Match` it ignores).
    Ignored,
    /// It answers that it cannot put conditionally.
    Unsupported,
}

/// Creates one object under `root` twice, create-only, and says what the store did with
/// the second; the object is deleted afterwards. `writer` keeps concurrent probes apart.
pub(super) async fn probe_conditional_puts(
    store: &dyn ObjectStore,
    root: &Path,
    writer: &str,
) -> Result<ConditionalPuts, object_store::Error> {
    let path = root
        .child("_eventbus")
        .child("probe")
        .child(format!("{writer}.txt"));
    let create = || PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    let put = |body: &'static [u8]| store.put_opts(&path, PutPayload::from_static(body), create());
    let verdict = match put(b"first").await {
        Err(object_store::Error::NotImplemented) => Ok(ConditionalPuts::Unsupported),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(ConditionalPuts::Honoured),
        Err(e) => return Err(e),
        Ok(_) => match put(b"second").await {
            Ok(_) => Ok(ConditionalPuts::Ignored),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(ConditionalPuts::Honoured),
            Err(object_store::Error::NotImplemented) => Ok(ConditionalPuts::Unsupported),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = store.delete(&path).await {
        tracing::debug!(path = %path, error = %e, "deleting the conditional-put probe");
    }
    verdict
}

pub(super) fn store_error(e: object_store::Error) -> SinkError {
    flush_error(describe_store_error(&error_chain(&e)))
}

/// An error with the errors that caused it, each once: object_store's own text stops
/// at "error sending request", and the cause (a refused TLS certificate, a refused
/// connection) is further down the chain.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

/// An object store error as an operator should read it: the store's own text, led by
/// what it means when that is one of the usual set-up mistakes.
pub(super) fn describe_store_error(text: &str) -> String {
    // S3 error bodies come on lines of their own; one error, one line.
    let text = &text.split_whitespace().collect::<Vec<_>>().join(" ");
    let hint = if text.contains("NoSuchBucket") {
        Some("the bucket does not exist")
    } else if text.contains("169.254.169.254") {
        // object_store falls back to the EC2 instance metadata service when no
        // credentials are configured; off EC2 that fails with an unrelated-looking URL.
        Some(
            "no S3 credentials were found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
             or access_key_id and secret_access_key in [warehouse.s3]), so the EC2 instance \
             metadata service was asked and did not answer",
        )
    } else if text.contains("InvalidAccessKeyId") || text.contains("SignatureDoesNotMatch") {
        Some("the S3 credentials were refused")
    } else if text.contains("certificate") {
        Some(
            "the endpoint's TLS certificate was not accepted (a private CA goes in \
             [warehouse.s3] ca_file or AWS_CA_BUNDLE)",
        )
    } else {
        None
    };
    match hint {
        Some(h) => format!("object store: {h}: {text}"),
        None => format!("object store: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(&'static str, Option<Box<Wrapped>>);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|w| w as _)
        }
    }

    #[test]
    fn the_cause_of_a_store_error_is_told_and_a_refused_certificate_is_named() {
        let e = Wrapped(
            "HTTP error: error sending request",
            Some(Box::new(Wrapped(
                "error sending request",
                Some(Box::new(Wrapped(
                    "invalid peer certificate: UnknownIssuer",
                    None,
                ))),
            ))),
        );
        let text = error_chain(&e);
        assert_eq!(
            text,
            "HTTP error: error sending request: invalid peer certificate: UnknownIssuer"
        );
        assert!(
            describe_store_error(&text).contains("TLS certificate was not accepted"),
            "{text}"
        );
    }

    #[test]
    fn store_errors_lead_with_the_set_up_mistake_they_mean() {
        let missing = describe_store_error(
            "Generic S3 error: ... 404 Not Found: <Error><Code>NoSuchBucket</Code><BucketName>b1</BucketName></Error>",
        );
        assert!(
            missing.starts_with("object store: the bucket does not exist: "),
            "{missing}"
        );
        assert!(
            missing.contains("b1"),
            "the store's own text stays: {missing}"
        );
        let no_creds = describe_store_error(
            "Generic S3 error: Error performing PUT http://169.254.169.254/latest/api/token: 403",
        );
        assert!(
            no_creds.contains("no S3 credentials were found"),
            "{no_creds}"
        );
        assert!(no_creds.contains("AWS_ACCESS_KEY_ID"), "{no_creds}");
        let refused = describe_store_error("... <Code>InvalidAccessKeyId</Code> ...");
        assert!(refused.contains("credentials were refused"), "{refused}");
        assert_eq!(
            describe_store_error("timed out:\n<Error/>"),
            "object store: timed out: <Error/>"
        );
    }
}
