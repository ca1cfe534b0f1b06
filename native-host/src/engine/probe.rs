//! What a server says about a URL before anything is downloaded: final URL after redirects, size, whether it serves
//! ranges, the validators that tell one version of the file from another, and the name it suggests.

use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Client, Method, Response, StatusCode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use url::{Origin, Url};

use super::error::TransferError;
use super::filename;
use super::response::{self, Asked, content_length, parse_content_range};
use super::segments::OPEN_END;

/// The HTTP client every transfer shares: HTTP/1.1 only (over HTTP/2 all ranges would share one TCP connection),
/// no compression (it breaks ranges), a connect timeout. It follows no redirect itself: [`send`] does, so that each
/// hop carries only the caller's headers that belong to its origin. Its TLS verifier reads the system's CA store at
/// the first certificate it checks ([`LazyRoots`]), not here: a plain-http download never pays for it.
pub fn client() -> Result<Client, TransferError> {
    Client::builder()
        .http1_only()
        .tls_backend_preconfigured(ClientConfig::clone(&*tls_config()?))
        .connect_timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sdm/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(TransferError::Client)
}

/// The TLS configuration of every https connection, reqwest's and the own-socket path's (`splice` over https): ring,
/// the platform's verifier built lazily ([`LazyRoots`]), ALPN `http/1.1` only. One per process, so the CA store is
/// read at most once whichever path meets the first certificate.
pub(crate) fn tls_config() -> Result<Arc<ClientConfig>, TransferError> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            // Several crypto providers may be compiled in; pick ring once. A second call finds one installed, which is
            // fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut tls = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(LazyRoots::new(provider)))
                .with_no_client_auth();
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            // The own-socket path takes the traffic keys over once rustls has done the handshake (`tls.rs`); a
            // connection of reqwest's never hands them out.
            tls.enable_secret_extraction = true;
            Ok(Arc::new(tls))
        })
        .clone()
        .map_err(|e| TransferError::Network(format!("TLS setup: {e}")))
}

/// Roots trusted besides the system's, for this process: see [`trust_extra_roots`].
static EXTRA_ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();

/// Trust `roots` besides the system's CA store, in this whole process. For tests, which run the engine in their own
/// process and cannot give it an `SSL_CERT_FILE`: call it before the first certificate is checked; only the first
/// call counts.
#[doc(hidden)]
pub fn trust_extra_roots(roots: Vec<CertificateDer<'static>>) {
    let _ = EXTRA_ROOTS.set(roots);
}

/// The platform's certificate verifier (what reqwest uses by default), built at the first certificate to check, once
/// per process ([`tls_config`]): building it reads and parses every CA certificate of the system (about 150 files on
/// Debian, some milliseconds), which a plain-http `sdm get` does not need. Signatures of the handshake itself need no
/// roots and are checked with the provider's algorithms, as the platform verifier does.
#[derive(Debug)]
struct LazyRoots {
    provider: Arc<CryptoProvider>,
    verifier: OnceLock<Result<rustls_platform_verifier::Verifier, rustls::Error>>,
}

impl LazyRoots {
    fn new(provider: Arc<CryptoProvider>) -> LazyRoots {
        LazyRoots {
            provider,
            verifier: OnceLock::new(),
        }
    }

    fn verifier(&self) -> Result<&rustls_platform_verifier::Verifier, rustls::Error> {
        self.verifier
            .get_or_init(|| match EXTRA_ROOTS.get() {
                Some(roots) => rustls_platform_verifier::Verifier::new_with_extra_roots(
                    roots.iter().cloned(),
                    self.provider.clone(),
                ),
                None => rustls_platform_verifier::Verifier::new(self.provider.clone()),
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl ServerCertVerifier for LazyRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Redirects followed before a request fails with [`TransferError::Redirects`].
const MAX_REDIRECTS: usize = 10;

/// The headers a caller gave (the user's `--header`s, the browser's cookies and credentials) and the origin they were
/// given for: scheme, host and port. They go there only. A request to any other origin (a redirect to another port,
/// host or scheme, or ranges fetched from where a redirect led) carries only what a browser itself sends anywhere:
/// `User-Agent`, `Accept`, `Accept-Language`, and `Referer` cut to its origin (none from https to http), as a
/// browser's default referrer policy does.
#[derive(Debug, Clone)]
pub struct Caller<'a> {
    headers: &'a HeaderMap,
    origin: Origin,
}

impl<'a> Caller<'a> {
    /// `headers`, given for `url`'s origin. A URL that does not parse has an origin nothing matches.
    pub fn new(headers: &'a HeaderMap, url: &str) -> Caller<'a> {
        let origin = Url::parse(url).map_or_else(|_| Origin::new_opaque(), |u| u.origin());
        Caller { headers, origin }
    }

    /// The caller's headers that may go to `url`.
    pub fn for_url(&self, url: &Url) -> HeaderMap {
        if url.origin() == self.origin {
            return self.headers.clone();
        }
        let mut out = HeaderMap::new();
        for name in [header::USER_AGENT, header::ACCEPT, header::ACCEPT_LANGUAGE] {
            for v in self.headers.get_all(&name) {
                out.append(name.clone(), v.clone());
            }
        }
        if let Some(referer) = self
            .headers
            .get(header::REFERER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Url::parse(v).ok())
            .filter(|r| matches!(r.scheme(), "http" | "https"))
            .filter(|r| !(r.scheme() == "https" && url.scheme() == "http"))
            .and_then(|r| {
                HeaderValue::from_str(&format!("{}/", r.origin().ascii_serialization())).ok()
            })
        {
            out.insert(header::REFERER, referer);
        }
        out
    }
}

/// Send a `method` request for `url` with the caller's headers that belong there and `own` (the engine's: range,
/// encoding), and follow redirects, each hop with the caller's headers for its own origin. The answer's
/// [`Response::url`] is where the last hop went.
pub async fn send(
    client: &Client,
    method: Method,
    url: &str,
    caller: &Caller<'_>,
    own: &HeaderMap,
) -> Result<Response, TransferError> {
    let mut url = Url::parse(url).map_err(|e| TransferError::Network(format!("bad URL: {e}")))?;
    for _ in 0..=MAX_REDIRECTS {
        let mut headers = caller.for_url(&url);
        headers.extend(own.clone());
        let resp = client
            .request(method.clone(), url.clone())
            .headers(headers)
            .send()
            .await
            .map_err(TransferError::from_reqwest)?;
        match redirect_target(&resp) {
            Some(next) => url = next,
            None => return Ok(resp),
        }
    }
    Err(TransferError::Redirects)
}

/// Where a redirect points, when `resp` is one this engine follows: a 301, 302, 303, 307 or 308 whose `Location` is
/// an http(s) URL. A GET or HEAD stays what it is on every one of them. Any other answer is the caller's to judge.
fn redirect_target(resp: &Response) -> Option<Url> {
    if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = resp.headers().get(header::LOCATION)?.to_str().ok()?;
    let next = resp.url().join(location).ok()?;
    matches!(next.scheme(), "http" | "https").then_some(next)
}

/// `Accept-Encoding: identity`, and whatever `extra` adds: the engine's own headers on every request.
fn own_headers(extra: impl FnOnce(&mut HeaderMap)) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    extra(&mut h);
    h
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

/// The file's first bytes, in the body of the probe's answer: bytes `range` of the file, not read yet, judged as
/// every answer is ([`response::judge`]). The transfer writes them as the first piece of its first segment.
pub struct FirstBody {
    pub range: Range<u64>,
    pub resp: Response,
}

/// GET the URL (with the caller's `headers`, given for its origin; see [`Caller`]) and read what the answer says of
/// the file: its size, whether it serves ranges (`Accept-Ranges: bytes` on a 200, or a 206), its validators and
/// name. One plain GET, as a browser sends it: some servers answer HEAD wrongly or not at all, name the file only on
/// GET, or answer a ranged request with an error page. Its body, the file from byte 0, comes back for the transfer to
/// write, so a small file costs one request.
///
/// `look`: only a look at the file is wanted (`Range: bytes=0-0`, the body dropped); an empty file's 416
/// (`bytes */0`) then reads as a size of zero, and a 200 as a server that ignores ranges.
pub async fn probe(
    client: &Client,
    url: &str,
    headers: &HeaderMap,
    timeout: Duration,
    look: bool,
) -> Result<(ProbeResult, Option<FirstBody>), TransferError> {
    let resp = get(client, url, headers, timeout, look.then_some(FIRST_BYTE)).await?;
    let status = resp.status();
    if look
        && status == StatusCode::RANGE_NOT_SATISFIABLE
        && unsatisfiable_total(resp.headers()) == Some(0)
    {
        let found = ProbeResult {
            total: Some(0),
            ranges: false,
            ..read(&resp, false)
        };
        return Ok((found, None));
    }
    if !status.is_success() {
        return Err(TransferError::from_status(status, resp.headers()));
    }
    let partial = status == StatusCode::PARTIAL_CONTENT;
    let mut found = read(&resp, partial);
    if look {
        // A 200 to a ranged request: the server ignores ranges, whatever its Accept-Ranges says.
        found.ranges &= partial;
        return Ok((found, None));
    }
    let asked = Asked {
        pos: 0,
        end: OPEN_END,
        ranges: partial,
        total: found.total,
        etag: None,
        last_modified: None,
    };
    // An answer whose bytes are not the file's from byte 0 (a 2xx without the file) gives the plan what it says but
    // none of its bytes: the transfer asks again and judges that answer.
    let body = response::judge(&asked, status, resp.headers())
        .ok()
        .map(|range| FirstBody {
            // A 200 of known size ends there: written to its end, its connection goes back to the pool.
            range: range.start..found.total.map_or(range.end, |t| range.end.min(t)),
            resp,
        });
    Ok((found, body))
}

/// The size in a 416's `Content-Range: bytes */N`.
fn unsatisfiable_total(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    v.trim()
        .strip_prefix("bytes")?
        .trim()
        .strip_prefix("*/")?
        .trim()
        .parse()
        .ok()
}

/// The `Range` of a look at a file.
const FIRST_BYTE: &str = "bytes=0-0";

/// GET the URL (its `range`, when given) with the caller's `headers` (given for `url`'s origin); the response head
/// must come within `timeout`. Redirects are followed. The body is not read: dropping the response closes its
/// connection.
async fn get(
    client: &Client,
    url: &str,
    headers: &HeaderMap,
    timeout: Duration,
    range: Option<&'static str>,
) -> Result<Response, TransferError> {
    let own = own_headers(|h| {
        if let Some(r) = range {
            h.insert(header::RANGE, HeaderValue::from_static(r));
        }
    });
    tokio::time::timeout(
        timeout,
        send(client, Method::GET, url, &Caller::new(headers, url), &own),
    )
    .await
    .map_err(|_| TransferError::Stalled)?
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

/// GET the URL's first byte (with the caller's `headers`, given for `url`'s origin) and read what its response says
/// of the file.
pub async fn first_byte(
    client: &Client,
    url: &str,
    headers: &HeaderMap,
    timeout: Duration,
) -> Result<FirstByte, TransferError> {
    let resp = get(client, url, headers, timeout, Some(FIRST_BYTE)).await?;
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
        let total = match h.get(header::CONTENT_ENCODING) {
            None => content_length(h),
            Some(_) => None,
        };
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

    #[test]
    fn the_ca_store_is_not_read_until_a_certificate_is_checked() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = LazyRoots::new(provider.clone());
        // What a ClientHello needs of the verifier does not read the store.
        assert_eq!(
            roots.supported_verify_schemes(),
            provider
                .signature_verification_algorithms
                .supported_schemes()
        );
        assert!(roots.verifier.get().is_none());
        let _ = roots.verifier();
        assert!(roots.verifier.get().is_some());
    }

    fn first(status: u16, total: Option<u64>, mime: Option<&str>) -> FirstByte {
        FirstByte {
            status: StatusCode::from_u16(status).unwrap(),
            total,
            mime: mime.map(media_type),
            name: None,
        }
    }

    #[test]
    fn caller_headers_go_whole_only_to_their_own_origin() {
        let mut given = HeaderMap::new();
        for (k, v) in [
            ("cookie", "sid=S"),
            ("authorization", "Bearer T"),
            ("proxy-authorization", "Basic P"),
            ("x-api-key", "K"),
            ("user-agent", "Browser/1"),
            ("accept", "*/*"),
            ("accept-language", "fr"),
            ("referer", "https://site.example/page?t=1"),
        ] {
            given.insert(k, HeaderValue::from_static(v));
        }
        let caller = Caller::new(&given, "https://files.example/r?to=x");
        let at = |u: &str| caller.for_url(&Url::parse(u).unwrap());
        assert_eq!(at("https://files.example/f.bin"), given);
        assert_eq!(
            at("https://FILES.example:443/other"),
            given,
            "the default port and case change nothing"
        );
        let names = |h: HeaderMap| {
            let mut n: Vec<String> = h.keys().map(|k| k.to_string()).collect();
            n.sort();
            n
        };
        for elsewhere in [
            "https://files.example:8443/f.bin",
            "http://files.example/f.bin",
            "https://cdn.example/f.bin",
        ] {
            let h = at(elsewhere);
            assert_eq!(
                h.get(header::USER_AGENT).unwrap(),
                "Browser/1",
                "{elsewhere}"
            );
            let kept = if elsewhere.starts_with("http:") {
                vec!["accept", "accept-language", "user-agent"]
            } else {
                assert_eq!(h.get(header::REFERER).unwrap(), "https://site.example/");
                vec!["accept", "accept-language", "referer", "user-agent"]
            };
            assert_eq!(names(h), kept, "{elsewhere}");
        }
        let opaque = HeaderMap::from_iter([(header::COOKIE, HeaderValue::from_static("a=1"))]);
        let nowhere = Caller::new(&opaque, "not a url");
        assert!(
            nowhere
                .for_url(&Url::parse("http://a.example/").unwrap())
                .is_empty()
        );
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
