//! What a server says about a URL before anything is downloaded: final URL after redirects, size, whether it serves
//! ranges, the validators that tell one version of the file from another, and the name it suggests.

use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Client, Response, StatusCode};

use super::transfer::TransferError;

/// The HTTP client every transfer shares: HTTP/1.1 only (over HTTP/2 all ranges would share one TCP connection),
/// no compression (it breaks ranges), a connect timeout, and redirects followed up to 10 times. reqwest drops
/// `Cookie` and `Authorization` when a redirect leaves the original host.
pub fn client() -> Result<Client, TransferError> {
    // Several crypto providers may be compiled in; pick ring once. A second call finds one installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .http1_only()
        .connect_timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::limited(10))
        .user_agent(concat!("sdm/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| TransferError::Setup(format!("cannot build the HTTP client: {e}")))
}

/// What the probe learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// The URL after redirects; ranges are fetched from here.
    pub final_url: String,
    pub total: Option<u64>,
    pub ranges: bool,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The name from Content-Disposition or the URL, unsanitized.
    pub name: Option<String>,
}

/// HEAD the URL; when HEAD fails, GET it with `Range: bytes=0-0`.
pub async fn probe(
    client: &Client,
    url: &str,
    headers: &HeaderMap,
    timeout: Duration,
) -> Result<ProbeResult, TransferError> {
    let head =
        tokio::time::timeout(timeout, client.head(url).headers(headers.clone()).send()).await;
    if let Ok(Ok(resp)) = head
        && resp.status().is_success()
        && resp.headers().get(header::CONTENT_ENCODING).is_none()
    {
        return Ok(read(&resp, false));
    }
    let resp = tokio::time::timeout(
        timeout,
        client
            .get(url)
            .headers(headers.clone())
            .header(header::RANGE, HeaderValue::from_static("bytes=0-0"))
            .send(),
    )
    .await
    .map_err(|_| TransferError::Stalled)?
    .map_err(TransferError::from_reqwest)?;
    let status = resp.status();
    if status == StatusCode::PARTIAL_CONTENT || status.is_success() {
        return Ok(read(&resp, status == StatusCode::PARTIAL_CONTENT));
    }
    Err(TransferError::from_status(status, resp.headers()))
}

fn read(resp: &Response, partial: bool) -> ProbeResult {
    let h = resp.headers();
    let text = |name: header::HeaderName| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (total, ranges) = if partial {
        let total = text(header::CONTENT_RANGE)
            .and_then(|v| parse_content_range(&v))
            .and_then(|r| r.total);
        (total, total.is_some())
    } else {
        let identity = h.get(header::CONTENT_ENCODING).is_none();
        // The header itself: for a HEAD response the body's length (`content_length()`) is zero.
        let total = if identity {
            text(header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok())
        } else {
            None
        };
        let ranges =
            text(header::ACCEPT_RANGES).is_some_and(|v| v.to_ascii_lowercase().contains("bytes"));
        (total, ranges && total.is_some())
    };
    let name = text(header::CONTENT_DISPOSITION)
        .and_then(|v| super::filename::from_content_disposition(&v))
        .or_else(|| super::filename::from_url(resp.url()));
    ProbeResult {
        final_url: resp.url().to_string(),
        total,
        ranges,
        etag: text(header::ETAG),
        last_modified: text(header::LAST_MODIFIED),
        name,
    }
}

/// A `Content-Range: bytes first-last/total` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
    pub total: Option<u64>,
}

pub fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.trim().split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (first <= last && total.is_none_or(|t| last < t)).then_some(ContentRange { first, last, total })
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
    use super::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 0-99/1000"),
            Some(ContentRange {
                first: 0,
                last: 99,
                total: Some(1000)
            })
        );
        assert_eq!(
            parse_content_range("bytes 5-9/*"),
            Some(ContentRange {
                first: 5,
                last: 9,
                total: None
            })
        );
        assert_eq!(parse_content_range("bytes 9-5/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
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
