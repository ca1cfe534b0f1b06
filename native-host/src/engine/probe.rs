//! What a server says about a URL before anything is downloaded: final URL after redirects, size, whether it serves
//! ranges, the validators that tell one version of the file from another, and the name it suggests.

use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Client, Response, StatusCode};

use super::error::TransferError;
use super::filename;
use super::response::{content_length, parse_content_range};

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
        .map_err(TransferError::Client)
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

/// HEAD the URL; when HEAD fails, GET it with `Range: bytes=0-0`. `want_name`: the caller takes the server's name
/// for the file, so when a successful HEAD carries no Content-Disposition, the first byte is also fetched with GET and
/// its Content-Disposition is read (some servers name the file on GET only). A caller with a fixed name pays no
/// second round trip.
pub async fn probe(
    client: &Client,
    url: &str,
    headers: &HeaderMap,
    timeout: Duration,
    want_name: bool,
) -> Result<ProbeResult, TransferError> {
    let head =
        tokio::time::timeout(timeout, client.head(url).headers(headers.clone()).send()).await;
    if let Ok(Ok(resp)) = head
        && resp.status().is_success()
        && resp.headers().get(header::CONTENT_ENCODING).is_none()
    {
        let mut found = read(&resp, false);
        let named = resp.headers().contains_key(header::CONTENT_DISPOSITION);
        drop(resp);
        if want_name && !named {
            // Best effort: when this GET fails, the transfer's own requests will say why; the name stays the URL's.
            if let Ok(get) = get_first_byte(client, url, headers, timeout).await
                && get.status().is_success()
                && let Some(name) = disposition_name(get.headers())
            {
                found.name = Some(name);
            }
        }
        return Ok(found);
    }
    let resp = get_first_byte(client, url, headers, timeout).await?;
    let status = resp.status();
    if status == StatusCode::PARTIAL_CONTENT || status.is_success() {
        return Ok(read(&resp, status == StatusCode::PARTIAL_CONTENT));
    }
    Err(TransferError::from_status(status, resp.headers()))
}

/// GET the URL's first byte (`Range: bytes=0-0`); the response head must come within `timeout`. Redirects are
/// followed. The body is not read: dropping the response closes its connection.
async fn get_first_byte(
    client: &Client,
    url: &str,
    headers: &HeaderMap,
    timeout: Duration,
) -> Result<Response, TransferError> {
    tokio::time::timeout(
        timeout,
        client
            .get(url)
            .headers(headers.clone())
            .header(header::RANGE, HeaderValue::from_static("bytes=0-0"))
            .send(),
    )
    .await
    .map_err(|_| TransferError::Stalled)?
    .map_err(TransferError::from_reqwest)
}

/// The file name a response's Content-Disposition gives, unsanitized.
fn disposition_name(h: &HeaderMap) -> Option<String> {
    h.get(header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(filename::from_content_disposition)
}

/// What the first response to a GET says, for a verified add to check against what the browser got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstByte {
    pub status: StatusCode,
    /// The whole file's size: the `Content-Range` total of a 206, the `Content-Length` of a 200.
    pub total: Option<u64>,
    /// The media type alone, lowercase (`text/html`, without parameters).
    pub mime: Option<String>,
    /// The name from Content-Disposition, else from the URL after redirects; unsanitized.
    pub name: Option<String>,
}

/// GET the URL's first byte and read what its response says of the file.
pub async fn first_byte(
    client: &Client,
    url: &str,
    headers: &HeaderMap,
    timeout: Duration,
) -> Result<FirstByte, TransferError> {
    let resp = get_first_byte(client, url, headers, timeout).await?;
    let status = resp.status();
    let h = resp.headers();
    let text = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    let total = if status == StatusCode::PARTIAL_CONTENT {
        text(header::CONTENT_RANGE)
            .and_then(parse_content_range)
            .and_then(|r| r.total)
    } else if status.is_success() && h.get(header::CONTENT_ENCODING).is_none() {
        content_length(h)
    } else {
        None
    };
    Ok(FirstByte {
        status,
        total,
        mime: text(header::CONTENT_TYPE).map(media_type),
        name: disposition_name(h).or_else(|| filename::from_url(resp.url())),
    })
}

/// `Text/HTML; charset=utf-8` -> `text/html`.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

impl FirstByte {
    /// Whether this response is the file the browser got (`size`, `mime`: what the browser saw, when known); if not,
    /// what differs, in words for the user.
    pub fn check(&self, size: Option<u64>, mime: Option<&str>) -> Result<(), String> {
        if !self.status.is_success() {
            return Err(format!(
                "the server answered {}{}",
                self.status.as_u16(),
                self.status
                    .canonical_reason()
                    .map(|r| format!(" {r}"))
                    .unwrap_or_default()
            ));
        }
        if let (Some(want), Some(got)) = (size, self.total)
            && want != got
        {
            return Err(format!(
                "the server offers {got} bytes, the browser got {want}"
            ));
        }
        let html = |m: &str| media_type(m) == "text/html";
        if self.mime.as_deref().is_some_and(html) && mime.is_some_and(|m| !html(m)) {
            return Err("the server sent a web page, not the file".into());
        }
        Ok(())
    }
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
        let total = if identity { content_length(h) } else { None };
        let ranges =
            text(header::ACCEPT_RANGES).is_some_and(|v| v.to_ascii_lowercase().contains("bytes"));
        (total, ranges && total.is_some())
    };
    let name = disposition_name(h).or_else(|| filename::from_url(resp.url()));
    ProbeResult {
        final_url: resp.url().to_string(),
        total,
        ranges,
        etag: text(header::ETAG),
        last_modified: text(header::LAST_MODIFIED),
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(status: u16, total: Option<u64>, mime: Option<&str>) -> FirstByte {
        FirstByte {
            status: StatusCode::from_u16(status).unwrap(),
            total,
            mime: mime.map(media_type),
            name: None,
        }
    }

    #[test]
    fn the_first_byte_must_be_the_file_the_browser_got() {
        let ok = first(206, Some(100), Some("application/octet-stream"));
        assert_eq!(
            ok.check(Some(100), Some("application/octet-stream")),
            Ok(())
        );
        assert_eq!(ok.check(None, None), Ok(()));
        assert_eq!(
            first(410, None, Some("text/plain")).check(None, None),
            Err("the server answered 410 Gone".into())
        );
        assert_eq!(
            ok.check(Some(456), None),
            Err("the server offers 100 bytes, the browser got 456".into())
        );
        assert_eq!(
            first(200, None, None).check(Some(456), None),
            Ok(()),
            "an unknown size is not a mismatch"
        );
        let page = first(200, Some(90), Some("Text/HTML; charset=utf-8"));
        assert_eq!(
            page.check(None, Some("application/pdf")),
            Err("the server sent a web page, not the file".into())
        );
        assert_eq!(
            page.check(None, Some("text/html")),
            Ok(()),
            "the browser got a page too"
        );
        assert_eq!(page.check(None, None), Ok(()), "nothing to compare with");
    }
}
