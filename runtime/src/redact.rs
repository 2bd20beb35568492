//! Personal data in messages about records.
//!
//! Error messages are written by whoever failed: a decoder, a validation, a downstream
//! service echoing what it got. Any of them can quote a field that holds personal data.
//! Before the runtime logs or returns such a message (the job-failure log and the error a
//! failed job ends with), and before the operators log one (the retry warning), it goes
//! through the process's [`Redact`], installed once with [`install`]. Without one,
//! messages pass unchanged.
//!
//! `eventbus_dlq::pii::PiiRedactor` is the one the eventbus jobs install: it finds the
//! catalog's PII fields in the record's decoded value and masks their values wherever
//! they appear in the text.

use std::sync::{Arc, OnceLock};

use crate::record::Origin;

/// Masks personal data in a message about the record at `origin`.
pub trait Redact: Send + Sync {
    /// `text` with the personal data of the record masked. `value` is the record's
    /// value when the caller holds it (raw bytes, e.g. the wire format); without it an
    /// implementation may read the record again by its origin.
    fn redact(&self, origin: &Origin, value: Option<&[u8]>, text: &str) -> String;
}

static REDACTOR: OnceLock<Arc<dyn Redact>> = OnceLock::new();

/// Installs the process's redactor. The first call wins: `false` when one was installed
/// already.
pub fn install(redactor: Arc<dyn Redact>) -> bool {
    REDACTOR.set(redactor).is_ok()
}

/// `text` as it may be shown: through the installed redactor, if any.
pub fn redact(origin: &Origin, value: Option<&[u8]>, text: &str) -> String {
    match REDACTOR.get() {
        Some(r) => r.redact(origin, value, text),
        None => text.to_owned(),
    }
}

/// Whether a redactor is installed.
pub fn installed() -> bool {
    REDACTOR.get().is_some()
}
