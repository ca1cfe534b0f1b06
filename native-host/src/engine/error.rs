//! Why a transfer stopped, and whether trying again can help.
//!
//! The probe, the connections and the part file all report through [`TransferError`]; it depends on nothing else in
//! the engine, so every module that fails can use it without importing another module's logic.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};

/// Why a transfer stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A request header the caller gave cannot be sent.
    #[error(transparent)]
    Header(#[from] protocol::validate::Invalid),
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    /// A task of the transfer ended without an answer (it panicked or was aborted).
    #[error("{0} task failed: {1}")]
    Task(&'static str, tokio::task::JoinError),
    /// A broken invariant of the engine itself.
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("server answered {status}{}", reason_suffix(*.status))]
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    #[error("network error: {0}")]
    Network(String),
    /// The server's TLS certificate was refused (see [`certificate_problem`]); asking again gets the same one.
    #[error("the server's certificate {0}")]
    Certificate(String),
    #[error("too many redirects (a redirect loop?)")]
    Redirects,
    /// The server's response is not HTTP we can read; asking again would get the same.
    #[error("malformed response from the server: {0}")]
    Malformed(String),
    #[error("connection stalled: no data within the stall timeout")]
    Stalled,
    #[error("connection closed early, {0} bytes short")]
    EarlyEof(u64),
    #[error("server sent a wrong range: {0}")]
    BadRange(String),
    /// The server ignores ranges; the transfer goes on over one connection.
    #[error("server does not serve ranges")]
    NoRanges,
    #[error("the file changed on the server during the download ({0})")]
    Changed(String),
    #[error("disk full while writing {0}: free some space, then resume")]
    DiskFull(PathBuf),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    Checksum { expected: String, actual: String },
    #[error("cancelled")]
    Cancelled,
}

/// What a status means for the user, after the status itself (whose display carries its reason phrase already).
fn reason_suffix(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND | StatusCode::GONE => ": the file is not on the server",
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            ": access denied (the site may need cookies or a login)"
        }
        _ => "",
    }
}

impl TransferError {
    pub(crate) fn from_reqwest(e: reqwest::Error) -> TransferError {
        if e.is_redirect() {
            return TransferError::Redirects;
        }
        if e.is_timeout() {
            return TransferError::Stalled;
        }
        let e = e.without_url();
        let mut msg = e.to_string();
        let mut malformed = false;
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            if let Some(problem) = certificate_problem(s) {
                return TransferError::Certificate(problem);
            }
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            malformed |= s
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_parse);
            src = s.source();
        }
        if malformed {
            TransferError::Malformed(msg)
        } else {
            TransferError::Network(msg)
        }
    }

    pub(crate) fn from_status(status: StatusCode, headers: &HeaderMap) -> TransferError {
        TransferError::Status {
            status,
            retry_after: retry_after(headers),
        }
    }

    /// A failed read or write of `path`; a full disk is told apart, since it pauses a download instead of failing it.
    pub(crate) fn io(path: &Path, source: std::io::Error) -> TransferError {
        if source.kind() == ErrorKind::StorageFull || source.raw_os_error() == Some(libc::ENOSPC) {
            TransferError::DiskFull(path.to_path_buf())
        } else {
            TransferError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// Worth another try on the same connection after a pause.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransferError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || status.as_u16() == 425
            }
            TransferError::Network(_)
            | TransferError::Stalled
            | TransferError::EarlyEof(_)
            | TransferError::BadRange(_) => true,
            _ => false,
        }
    }

    /// A full disk pauses a download rather than failing it: it can go on once space is freed.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, TransferError::DiskFull(_))
    }

    /// How long the server asked us to wait before the next try.
    pub(crate) fn wait_hint(&self) -> Option<Duration> {
        match self {
            TransferError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What is wrong with the server's certificate, in words for the user, when `e` is rustls refusing it: itself, or
/// wrapped in `io::Error`s (the connector wraps it twice), whose `source` skips the error they wrap.
pub(crate) fn certificate_problem(mut e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::CertificateError as C;
    while let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        e = inner;
    }
    let tls = e.downcast_ref::<rustls::Error>()?;
    let rustls::Error::InvalidCertificate(cert) = tls else {
        return None;
    };
    Some(match cert {
        C::UnknownIssuer | C::BadSignature => {
            "is not trusted: it is self-signed or from an unknown issuer".into()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "is for another host name (the host does not match)".into()
        }
        C::Expired | C::ExpiredContext { .. } => "has expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "is not valid yet".into(),
        C::Revoked => "was revoked".into(),
        other => format!("was refused: {other}"),
    })
}

/// How long a server asks us to wait (`Retry-After`: seconds or an HTTP date), capped at five minutes.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.min(Duration::from_secs(300)))
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn a_refused_certificate_is_named_through_its_io_wrappers_and_not_retried() {
        let wrapped = |c: rustls::CertificateError| {
            let tls = rustls::Error::InvalidCertificate(c);
            std::io::Error::other(std::io::Error::new(ErrorKind::InvalidData, tls))
        };
        let problem = |c| certificate_problem(&wrapped(c));
        assert_eq!(
            problem(rustls::CertificateError::Expired).unwrap(),
            "has expired"
        );
        assert!(
            problem(rustls::CertificateError::UnknownIssuer)
                .unwrap()
                .contains("self-signed")
        );
        assert!(
            problem(rustls::CertificateError::NotValidForName)
                .unwrap()
                .contains("another host name")
        );
        assert_eq!(certificate_problem(&std::io::Error::other("reset")), None);
        assert!(!TransferError::Certificate("has expired".into()).is_retryable());
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(300)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }
}
