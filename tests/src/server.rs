//! A real HTTP/1.1 server on `127.0.0.1:0` that serves generated files and breaks them on demand.
//!
//! It is hand-written on raw tokio TCP (request line and headers parsed here, every response byte written here) so a
//! test controls exactly what goes on the wire: a `206` whose `Content-Range` lies, a body cut after K bytes, a
//! connection that stalls after the headers. reqwest's `tests/support/server.rs` and ureq's broken test responses are
//! the models.
//!
//! ```text
//! let server = TestServer::start().await;
//! let file = server.serve("/big.bin", FileSpec::new(20 << 20).seed(7).cut_after(100_000, 2));
//! // ... download file.url() ...
//! assert_eq!(sha256_file(&path), file.sha256());
//! assert!(file.requests().iter().all(|r| r.header("accept-encoding") == Some("identity")));
//! ```
//!
//! The server stops when the [`TestServer`] is dropped: the accept loop is aborted and with it every connection.
//! Files are never stored: content is a pure function of (seed, version, offset), so a 64 MiB file costs nothing
//! until a test asks for its expected bytes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// "For every request", where a fault takes a count of requests it applies to.
pub const ALWAYS: u32 = u32::MAX;

/// Largest request head the server reads before giving up on a connection.
const MAX_HEAD: usize = 64 * 1024;
/// Body bytes per write when no rate cap is set.
const CHUNK: usize = 64 * 1024;

/// Lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lowercase hex sha256 of a file's contents.
pub fn sha256_file(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    sha256_hex(&data)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a generated file: `len` bytes of version `version` of the content seeded by `seed`.
pub fn expected_bytes(seed: u64, version: u32, len: u64) -> Vec<u8> {
    let mut buf = vec![0; usize::try_from(len).expect("file fits in memory")];
    fill(seed, version, 0, &mut buf);
    buf
}

/// Fill `buf` with the content at `offset` of version `version` of the file seeded by `seed`.
///
/// Each 8-byte word is splitmix64 of its index, so any range can be produced without producing what comes before it.
pub fn fill(seed: u64, version: u32, offset: u64, buf: &mut [u8]) {
    let key = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(version).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let word = splitmix64(key ^ (pos / 8)).to_le_bytes();
        let k = (pos % 8) as usize;
        let n = (8 - k).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[k..k + n]);
        i += n;
        pos += n as u64;
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How a response without `Content-Length` marks the end of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLength {
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// No framing at all: the body ends when the server closes the connection.
    CloseDelimited,
}

/// A fault that applies to the first `times` responses that carry a body (`ALWAYS` = all of them).
#[derive(Debug, Clone, Copy)]
struct Counted<T> {
    value: T,
    times: u32,
}

impl<T: Copy> Counted<T> {
    fn at(this: Option<Counted<T>>, n: u32) -> Option<T> {
        this.filter(|c| n < c.times).map(|c| c.value)
    }
}

/// How one served file behaves: a builder, consumed by [`TestServer::serve`].
///
/// Counts: "requests" counts every request to the path (HEAD included), "responses" counts only the `GET` responses
/// that carry file bytes (200 or 206). Both start at 0 for each file.
#[derive(Debug, Clone)]
pub struct FileSpec {
    len: u64,
    seed: u64,
    ranges: bool,
    head: bool,
    /// How long HEAD waits for its answer.
    head_delay: Duration,
    /// How long GET waits for its answer.
    get_delay: Duration,
    accept_ranges_header: bool,
    no_length: Option<NoLength>,
    rate: u64,
    slow_range: Option<(u64, u64)>,
    /// Requests `[from, to)` get this status.
    status_window: Option<(u32, u32, u16)>,
    /// Requests `[from, to)` get no answer at all.
    hang_window: Option<(u32, u32)>,
    /// The longest range one response carries.
    max_range: Option<u64>,
    status_always: Option<u16>,
    retry_after: Option<String>,
    cut_after: Option<Counted<u64>>,
    stall_after: Option<Counted<u64>>,
    etag: bool,
    last_modified: bool,
    content_changes_after: Option<u32>,
    content_type: String,
    headers: Vec<(String, Vec<u8>)>,
    /// Sent on GET responses that carry the file, never on HEAD.
    get_headers: Vec<(String, Vec<u8>)>,
    wrong_content_range: Option<Counted<()>>,
    extra_bytes: Option<Counted<u64>>,
    short_body: Option<Counted<u64>>,
    html_on_range: Option<Counted<()>>,
    /// Where a GET with `Range` is sent (302) instead of being answered.
    range_redirect: Option<String>,
    length_lie: Option<Counted<i64>>,
    required_headers: Vec<(String, String)>,
}

impl FileSpec {
    /// A well-behaved file of `len` bytes: ranges, HEAD and `Accept-Ranges: bytes`, a `Content-Length`, no validators.
    pub fn new(len: u64) -> FileSpec {
        FileSpec {
            len,
            seed: len ^ 0x5D_5EED,
            ranges: true,
            head: true,
            head_delay: Duration::ZERO,
            get_delay: Duration::ZERO,
            accept_ranges_header: true,
            no_length: None,
            rate: 0,
            slow_range: None,
            status_window: None,
            hang_window: None,
            max_range: None,
            status_always: None,
            retry_after: None,
            cut_after: None,
            stall_after: None,
            etag: false,
            last_modified: false,
            content_changes_after: None,
            content_type: "application/octet-stream".into(),
            headers: Vec::new(),
            get_headers: Vec::new(),
            wrong_content_range: None,
            extra_bytes: None,
            short_body: None,
            html_on_range: None,
            range_redirect: None,
            length_lie: None,
            required_headers: Vec::new(),
        }
    }

    /// Which content: two files with the same seed and length have the same bytes.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Ignore `Range` and answer `200` with the whole body, without `Accept-Ranges`.
    pub fn no_ranges(mut self) -> Self {
        self.ranges = false;
        self.accept_ranges_header = false;
        self
    }

    /// Advertise `Accept-Ranges: bytes` (and answer HEAD as if ranges worked) but answer every `GET` with `200` and
    /// the whole body, as some CDNs and proxies do.
    pub fn ignore_ranges(mut self) -> Self {
        self.ranges = false;
        self
    }

    /// Honour ranges but do not advertise them with `Accept-Ranges: bytes`.
    pub fn hide_accept_ranges(mut self) -> Self {
        self.accept_ranges_header = false;
        self
    }

    /// Answer HEAD with `405 Method Not Allowed`.
    pub fn no_head(mut self) -> Self {
        self.head = false;
        self
    }

    /// Answer HEAD only after `delay`, like a server a long way off.
    pub fn head_delay(mut self, delay: Duration) -> Self {
        self.head_delay = delay;
        self
    }

    /// Answer GET only after `delay`: a server slow to start, so a test can act while a request is out.
    pub fn get_delay(mut self, delay: Duration) -> Self {
        self.get_delay = delay;
        self
    }

    /// Send no `Content-Length`; frame the body as `how` says. Ranges are turned off too: a size-less file has none.
    pub fn no_length(mut self, how: NoLength) -> Self {
        self.no_length = Some(how);
        self.no_ranges()
    }

    /// Cap every response (so every connection) at `bytes_per_sec`.
    pub fn rate(mut self, bytes_per_sec: u64) -> Self {
        self.rate = bytes_per_sec;
        self
    }

    /// Cap at `bytes_per_sec` only the responses to ranges starting at or past `from_offset`: one slow segment.
    pub fn slow_range(mut self, from_offset: u64, bytes_per_sec: u64) -> Self {
        self.slow_range = Some((from_offset, bytes_per_sec));
        self
    }

    /// Answer the first `n` requests with `status` (503 and 429 are the usual ones) instead of the file.
    pub fn status_first(self, n: u32, status: u16) -> Self {
        self.status_after(0, n, status)
    }

    /// Serve the first `skip` requests normally, then answer the next `n` with `status`: errors that hit the
    /// transfer's connections rather than its probe.
    pub fn status_after(mut self, skip: u32, n: u32, status: u16) -> Self {
        self.status_window = Some((skip, skip.saturating_add(n), status));
        self
    }

    /// Send every GET that carries `Range` to `location` with a 302, as download redirectors do for each request;
    /// HEAD and plain GETs are answered here.
    pub fn redirect_ranges(mut self, location: impl Into<String>) -> Self {
        self.range_redirect = Some(location.into());
        self
    }

    /// Answer every request with `status` (404, 410...).
    pub fn status_always(mut self, status: u16) -> Self {
        self.status_always = Some(status);
        self
    }

    /// Read requests `skip..skip + n` and never answer them (not even a status line), holding the connection open
    /// until the client gives up.
    pub fn hang_after(mut self, skip: u32, n: u32) -> Self {
        self.hang_window = Some((skip, skip.saturating_add(n)));
        self
    }

    /// Add `Retry-After: <value>` to the error statuses of [`status_first`](Self::status_first).
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        self.retry_after = Some(value.into());
        self
    }

    /// Close the connection after `bytes` body bytes, in the first `times` responses.
    pub fn cut_after(mut self, bytes: u64, times: u32) -> Self {
        self.cut_after = Some(Counted {
            value: bytes,
            times,
        });
        self
    }

    /// Send the head and `bytes` body bytes, then nothing (the connection stays open), in the first `times` responses.
    pub fn stall_after(mut self, bytes: u64, times: u32) -> Self {
        self.stall_after = Some(Counted {
            value: bytes,
            times,
        });
        self
    }

    /// Send a strong `ETag` that changes with the content version, and honour `If-Range` / `If-Match` against it.
    pub fn etag(mut self) -> Self {
        self.etag = true;
        self
    }

    /// Send a `Last-Modified` that changes with the content version.
    pub fn last_modified(mut self) -> Self {
        self.last_modified = true;
        self
    }

    /// From request number `n` on (0-based, HEAD included), serve the next content version with a new validator.
    pub fn content_changes_after(mut self, n: u32) -> Self {
        self.content_changes_after = Some(n);
        self
    }

    pub fn content_type(mut self, value: impl Into<String>) -> Self {
        self.content_type = value.into();
        self
    }

    /// `Content-Disposition: <value>`, written as is (control characters included).
    pub fn content_disposition(self, value: impl Into<Vec<u8>>) -> Self {
        self.header("Content-Disposition", value)
    }

    /// `Content-Disposition: <value>` on GET responses only, as servers that name a file only when it is fetched.
    pub fn content_disposition_on_get(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.get_headers
            .push(("Content-Disposition".into(), value.into()));
        self
    }

    /// Any extra response header, written as raw bytes.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Answer a ranged request with at most `bytes` bytes, with an honest `Content-Range` for the shorter range (some
    /// servers and CDNs cap ranges this way; the client must ask again for the rest).
    pub fn max_range(mut self, bytes: u64) -> Self {
        self.max_range = Some(bytes.max(1));
        self
    }

    /// On a ranged request, claim a `Content-Range` that starts 4096 bytes later than the bytes actually sent.
    pub fn wrong_content_range(mut self, times: u32) -> Self {
        self.wrong_content_range = Some(Counted { value: (), times });
        self
    }

    /// On a ranged request, send `extra` bytes past the end asked for, with honest headers for the longer range.
    pub fn extra_bytes(mut self, extra: u64, times: u32) -> Self {
        self.extra_bytes = Some(Counted {
            value: extra,
            times,
        });
        self
    }

    /// Announce the full length but send `missing` fewer bytes, then close.
    pub fn short_body(mut self, missing: u64, times: u32) -> Self {
        self.short_body = Some(Counted {
            value: missing,
            times,
        });
        self
    }

    /// Answer a ranged request with `200 OK` and a small HTML error page.
    pub fn html_on_range(mut self, times: u32) -> Self {
        self.html_on_range = Some(Counted { value: (), times });
        self
    }

    /// Announce `Content-Length` off by `delta` from the bytes sent (the body is sent whole, then the connection
    /// closes).
    pub fn length_lie(mut self, delta: i64, times: u32) -> Self {
        self.length_lie = Some(Counted {
            value: delta,
            times,
        });
        self
    }

    /// Answer `403` unless the request's `Cookie` header contains `cookie` (`"session=abc"`).
    pub fn require_cookie(self, cookie: impl Into<String>) -> Self {
        self.require_header("cookie", cookie)
    }

    /// Answer `403` unless header `name` is present and contains `value`.
    pub fn require_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.required_headers
            .push((name.into().to_ascii_lowercase(), value.into()));
        self
    }
}

/// One request the server received, and what it answered.
#[derive(Debug, Clone)]
pub struct Request {
    /// Which connection carried it: equal numbers mean a reused (keep-alive) connection.
    pub conn: u64,
    /// When that connection was accepted.
    pub accepted: Instant,
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// Names lowercased, values as sent (lossy UTF-8), in order.
    pub headers: Vec<(String, String)>,
    pub at: Instant,
    /// The status answered (0 until the head was written).
    pub status: u16,
    /// Body bytes written to the socket for this request so far.
    pub body_bytes: u64,
    /// When the response ended (sent whole, cut, or given up on by the client); `None` while it runs.
    pub done_at: Option<Instant>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `Range` header as `(first, last)`; `last` is `None` for an open range (`bytes=N-`).
    pub fn range(&self) -> Option<(u64, Option<u64>)> {
        match parse_range(self.header("range")?)? {
            ByteRange::From(a, b) => Some((a, b)),
            ByteRange::Suffix(_) => None,
        }
    }

    /// Where the requested range starts, for a `bytes=N-...` range.
    pub fn range_start(&self) -> Option<u64> {
        self.range().map(|(a, _)| a)
    }
}

/// What the server does at a path.
enum Route {
    File(Arc<FileState>),
    Redirect { location: String, status: u16 },
}

/// A served file's spec and counters.
struct FileState {
    spec: FileSpec,
    requests: AtomicU32,
    responses: AtomicU32,
    /// Versions added by [`ServedFile::change_content`].
    bumps: AtomicU32,
    bytes_sent: AtomicU64,
    active: AtomicU32,
    peak_active: AtomicU32,
}

impl FileState {
    /// The content version request number `req_no` sees.
    fn version_for(&self, req_no: u32) -> u32 {
        let auto = match self.spec.content_changes_after {
            Some(n) if req_no >= n => 1,
            _ => 0,
        };
        self.bumps.load(Ordering::SeqCst) + auto
    }

    fn etag(&self, version: u32) -> String {
        format!("\"{:x}-{}\"", self.spec.seed, version)
    }
}

fn last_modified(version: u32) -> String {
    format!(
        "Mon, 02 Jan 2023 03:{:02}:{:02} GMT",
        (version / 60) % 60,
        version % 60
    )
}

struct Shared {
    addr: SocketAddr,
    routes: Mutex<HashMap<String, Route>>,
    log: Mutex<Vec<Request>>,
    next_conn: AtomicU64,
    /// Body responses in flight, per path, for "how many files download at once".
    active_paths: Mutex<HashMap<String, u32>>,
    peak_paths: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the log from the assertions that follow.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server. Dropping it closes the listener and every open connection.
pub struct TestServer {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Bind `127.0.0.1:0` and start serving (nothing is served until [`serve`](Self::serve) names a file).
    pub async fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            addr,
            routes: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(0),
            active_paths: Mutex::new(HashMap::new()),
            peak_paths: AtomicU32::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        TestServer { shared, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.shared.addr, path)
    }

    /// Serve a generated file at `path` (which starts with `/`; a query string is part of the match).
    pub fn serve(&self, path: &str, spec: FileSpec) -> ServedFile {
        let state = Arc::new(FileState {
            spec,
            requests: AtomicU32::new(0),
            responses: AtomicU32::new(0),
            bumps: AtomicU32::new(0),
            bytes_sent: AtomicU64::new(0),
            active: AtomicU32::new(0),
            peak_active: AtomicU32::new(0),
        });
        lock(&self.shared.routes).insert(path.to_string(), Route::File(state.clone()));
        ServedFile {
            path: path.to_string(),
            url: self.url(path),
            state,
            shared: self.shared.clone(),
        }
    }

    /// Answer `302 Found` at `from`, pointing at `to` (a path on this server, or an absolute URL).
    /// Two redirects pointing at each other make a loop.
    pub fn redirect(&self, from: &str, to: &str) {
        self.redirect_with(from, to, 302);
    }

    pub fn redirect_with(&self, from: &str, to: &str, status: u16) {
        let location = if to.starts_with('/') {
            self.url(to)
        } else {
            to.to_string()
        };
        lock(&self.shared.routes).insert(from.to_string(), Route::Redirect { location, status });
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.log).clone()
    }

    /// The most files that were being sent at the same moment (counting only responses carrying file bytes).
    pub fn peak_files_at_once(&self) -> u32 {
        self.shared.peak_paths.load(Ordering::SeqCst)
    }
}

/// A file the server serves: its URL, its expected bytes, and what the server saw of it. Cheap to clone.
#[derive(Clone)]
pub struct ServedFile {
    path: String,
    url: String,
    state: Arc<FileState>,
    shared: Arc<Shared>,
}

impl ServedFile {
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.state.spec.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The version the next request will see (0 until the content changes).
    pub fn version(&self) -> u32 {
        self.state
            .version_for(self.state.requests.load(Ordering::SeqCst))
    }

    /// The bytes of the current version.
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes_of_version(self.version())
    }

    /// The bytes of version `version` (0 = original).
    pub fn bytes_of_version(&self, version: u32) -> Vec<u8> {
        expected_bytes(self.state.spec.seed, version, self.state.spec.len)
    }

    /// The sha256 of the current version.
    pub fn sha256(&self) -> String {
        sha256_hex(&self.bytes())
    }

    /// The ETag of the current version (whether or not the server sends one).
    pub fn etag(&self) -> String {
        self.state.etag(self.version())
    }

    /// Change the content now: later responses carry new bytes and new validators. Responses already being sent
    /// finish with the bytes they started with, as a real server replacing a file would.
    pub fn change_content(&self) {
        self.state.bumps.fetch_add(1, Ordering::SeqCst);
    }

    /// The requests for this path, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.path == self.path)
            .cloned()
            .collect()
    }

    /// The `GET` requests for this path.
    pub fn gets(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET")
            .collect()
    }

    /// Body bytes written to sockets for this path, over all responses.
    pub fn bytes_sent(&self) -> u64 {
        self.state.bytes_sent.load(Ordering::SeqCst)
    }

    /// Body responses being sent right now.
    pub fn active(&self) -> u32 {
        self.state.active.load(Ordering::SeqCst)
    }

    /// The most body responses that were in flight at once: the connections the client really used.
    pub fn peak_active(&self) -> u32 {
        self.state.peak_active.load(Ordering::SeqCst)
    }

    /// The most responses that each carried at least `min_bytes` of body and overlapped in time: the connections
    /// that really moved data, leaving out a probe the client dropped just as it opened the next connection.
    pub fn peak_data_connections(&self, min_bytes: u64) -> usize {
        let now = Instant::now();
        let spans: Vec<(Instant, Instant)> = self
            .requests()
            .iter()
            .filter(|r| r.body_bytes >= min_bytes)
            .map(|r| (r.at, r.done_at.unwrap_or(now)))
            .collect();
        spans
            .iter()
            .map(|&(at, _)| spans.iter().filter(|&&(a, b)| a <= at && at < b).count())
            .max()
            .unwrap_or(0)
    }

    /// Body bytes sent in answer to requests that arrived at or after `since`.
    pub fn bytes_sent_since(&self, since: Instant) -> u64 {
        self.requests()
            .iter()
            .filter(|r| r.at >= since)
            .map(|r| r.body_bytes)
            .sum()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owning the connections here means aborting this task (on drop) aborts them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
                conns.spawn(connection(stream, id, Instant::now(), shared.clone()));
            }
            Some(_) = conns.join_next() => {}
        }
    }
}

/// What a response left the connection fit for.
enum After {
    KeepAlive,
    Close,
}

async fn connection(stream: TcpStream, conn: u64, accepted: Instant, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let Some(head) = read_head(&mut rd).await else {
            return;
        };
        let idx = {
            let mut log = lock(&shared.log);
            log.push(Request {
                conn,
                accepted,
                method: head.method.clone(),
                path: head.target.clone(),
                headers: head.headers.clone(),
                at: Instant::now(),
                status: 0,
                body_bytes: 0,
                done_at: None,
            });
            log.len() - 1
        };
        // Request bodies are not expected, but skip one if a client sends it so the next head parses.
        if let Some(n) = head
            .header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
        {
            let mut sink = tokio::io::sink();
            if tokio::io::copy(&mut (&mut rd).take(n), &mut sink)
                .await
                .is_err()
            {
                return;
            }
        }
        let mut out = Out {
            wr: &mut wr,
            shared: &shared,
            idx,
            head_only: head.method == "HEAD",
        };
        let after = respond(&shared, &head, &mut out, &mut rd).await;
        lock(&shared.log)[idx].done_at = Some(Instant::now());
        let close = head
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if close || matches!(after, After::Close) {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Read one request head; `None` at EOF or on anything unparseable (the connection is then dropped).
async fn read_head(rd: &mut BufReader<OwnedReadHalf>) -> Option<Head> {
    let mut total = 0;
    let mut line = Vec::new();
    // Skip blank lines between pipelined requests, as RFC 9112 allows.
    let request_line = loop {
        line.clear();
        let n = rd.read_until(b'\n', &mut line).await.ok()?;
        if n == 0 {
            return None;
        }
        total += n;
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if !text.is_empty() {
            break text;
        }
        if total > MAX_HEAD {
            return None;
        }
    };
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        let n = rd.read_until(b'\n', &mut line).await.ok()?;
        if n == 0 {
            return None;
        }
        total += n;
        if total > MAX_HEAD {
            return None;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            break;
        }
        let (name, value) = text.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Some(Head {
        method,
        target,
        headers,
    })
}

/// The write side of one response, with the bookkeeping that goes with it.
struct Out<'a> {
    wr: &'a mut OwnedWriteHalf,
    shared: &'a Shared,
    idx: usize,
    /// The request was HEAD: whatever the status, no body follows the head (RFC 9110 §9.3.2).
    head_only: bool,
}

impl Out<'_> {
    async fn head(&mut self, status: u16, headers: &[(String, Vec<u8>)]) -> std::io::Result<()> {
        let mut buf = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
        buf.extend_from_slice(b"Server: sdm-test\r\n");
        for (name, value) in headers {
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value);
            buf.extend_from_slice(b"\r\n");
        }
        buf.extend_from_slice(b"\r\n");
        lock(&self.shared.log)[self.idx].status = status;
        self.wr.write_all(&buf).await
    }

    /// A complete small response with a body and `Content-Length`.
    async fn simple(
        &mut self,
        status: u16,
        mut headers: Vec<(String, Vec<u8>)>,
        body: &str,
    ) -> After {
        headers.push(("Content-Length".into(), body.len().to_string().into()));
        if headers.iter().all(|(n, _)| n != "Content-Type") {
            headers.push(("Content-Type".into(), b"text/plain".to_vec()));
        }
        if self.head(status, &headers).await.is_err()
            || !self.head_only && self.wr.write_all(body.as_bytes()).await.is_err()
        {
            return After::Close;
        }
        After::KeepAlive
    }

    fn count_body(&self, file: &FileState, n: u64) {
        file.bytes_sent.fetch_add(n, Ordering::SeqCst);
        lock(&self.shared.log)[self.idx].body_bytes += n;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        412 => "Precondition Failed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn h(name: &str, value: impl Into<Vec<u8>>) -> (String, Vec<u8>) {
    (name.to_string(), value.into())
}

enum ByteRange {
    /// `bytes=a-b` or `bytes=a-`.
    From(u64, Option<u64>),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// Parse a single-range `Range` header; multiple ranges and other units are `None` (served as if absent).
fn parse_range(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return Some(ByteRange::Suffix(b.parse().ok()?));
    }
    let a = a.parse().ok()?;
    if b.is_empty() {
        return Some(ByteRange::From(a, None));
    }
    let b = b.parse().ok()?;
    (b >= a).then_some(ByteRange::From(a, Some(b)))
}

async fn respond(
    shared: &Shared,
    head: &Head,
    out: &mut Out<'_>,
    rd: &mut BufReader<OwnedReadHalf>,
) -> After {
    // Routes are looked up by the path with its query, then without, so `/f?x=1` can still reach `/f`.
    let route = {
        let routes = lock(&shared.routes);
        let bare = head.target.split('?').next().unwrap_or("");
        match routes.get(&head.target).or_else(|| routes.get(bare)) {
            Some(Route::File(f)) => Some(Ok(f.clone())),
            Some(Route::Redirect { location, status }) => Some(Err((location.clone(), *status))),
            None => None,
        }
    };
    match route {
        None => out.simple(404, vec![], "no such file\n").await,
        Some(Err((location, status))) => {
            out.simple(status, vec![h("Location", location)], "moved\n")
                .await
        }
        Some(Ok(file)) => respond_file(shared, &file, head, out, rd).await,
    }
}

async fn respond_file(
    shared: &Shared,
    file: &FileState,
    head: &Head,
    out: &mut Out<'_>,
    rd: &mut BufReader<OwnedReadHalf>,
) -> After {
    let spec = &file.spec;
    let req_no = file.requests.fetch_add(1, Ordering::SeqCst);
    if let Some((from, to)) = spec.hang_window
        && (from..to).contains(&req_no)
    {
        wait_for_close(rd).await;
        return After::Close;
    }

    for (name, want) in &spec.required_headers {
        if !head.header(name).is_some_and(|v| v.contains(want.as_str())) {
            return out
                .simple(
                    403,
                    vec![h("Content-Type", "text/html")],
                    "<html>log in first</html>\n",
                )
                .await;
        }
    }
    if let Some(status) = spec.status_always {
        return out.simple(status, vec![], "go away\n").await;
    }
    if let Some((from, to, status)) = spec.status_window
        && (from..to).contains(&req_no)
    {
        let mut headers = vec![];
        if let Some(ra) = &spec.retry_after {
            headers.push(h("Retry-After", ra.clone()));
        }
        return out.simple(status, headers, "try later\n").await;
    }
    let is_head = head.method == "HEAD";
    let delay = if is_head {
        spec.head_delay
    } else {
        spec.get_delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if is_head && !spec.head || !is_head && head.method != "GET" {
        return out
            .simple(405, vec![h("Allow", "GET")], "method not allowed\n")
            .await;
    }
    if let Some(location) = &spec.range_redirect
        && !is_head
        && head.header("range").is_some()
    {
        return out
            .simple(302, vec![h("Location", location.clone())], "moved\n")
            .await;
    }

    let version = file.version_for(req_no);
    let etag = file.etag(version);
    let modified = last_modified(version);
    let validator_matches =
        |v: &str| (spec.etag && v == etag) || (spec.last_modified && v == modified);
    if let Some(want) = head.header("if-match")
        && want != "*"
        && !(spec.etag && want.split(',').any(|t| t.trim() == etag))
    {
        return out.simple(412, vec![], "precondition failed\n").await;
    }

    let total = spec.len;
    let mut range = if spec.ranges {
        head.header("range").and_then(parse_range)
    } else {
        None
    };
    if let Some(v) = head.header("if-range")
        && !validator_matches(v)
    {
        range = None;
    }
    // Resolve the range to inclusive bounds, or answer 416.
    let bounds = match range {
        None => None,
        Some(ByteRange::From(a, _)) if a >= total => {
            let headers = vec![h("Content-Range", format!("bytes */{total}"))];
            return out.simple(416, headers, "").await;
        }
        Some(ByteRange::From(a, b)) => Some((a, b.unwrap_or(u64::MAX).min(total - 1))),
        Some(ByteRange::Suffix(n)) if n == 0 || total == 0 => {
            let headers = vec![h("Content-Range", format!("bytes */{total}"))];
            return out.simple(416, headers, "").await;
        }
        Some(ByteRange::Suffix(n)) => Some((total - n.min(total), total - 1)),
    };

    // HEAD gets number `u32::MAX`, which no fault count reaches: faults are about bodies.
    let resp_no = if is_head {
        u32::MAX
    } else {
        file.responses.fetch_add(1, Ordering::SeqCst)
    };

    if bounds.is_some() && Counted::at(spec.html_on_range, resp_no).is_some() {
        let page =
            "<!DOCTYPE html><html><body><h1>Oops</h1><p>Something went wrong.</p></body></html>\n";
        return out
            .simple(200, vec![h("Content-Type", "text/html")], page)
            .await;
    }

    // What the body really is: [start, end) of the content, and what the head claims about it.
    let (status, start, end) = match bounds {
        Some((a, b)) => {
            let b = match Counted::at(spec.extra_bytes, resp_no) {
                Some(extra) => (b + extra).min(total - 1),
                None => b,
            };
            let b = match spec.max_range {
                Some(max) => b.min(a + max - 1),
                None => b,
            };
            (206, a, b + 1)
        }
        None => (200, 0, total),
    };
    let mut headers = vec![h("Content-Type", spec.content_type.clone())];
    if spec.accept_ranges_header {
        headers.push(h("Accept-Ranges", "bytes"));
    }
    if spec.etag {
        headers.push(h("ETag", etag.clone()));
    }
    if spec.last_modified {
        headers.push(h("Last-Modified", modified.clone()));
    }
    headers.extend(spec.headers.iter().cloned());
    if !is_head {
        headers.extend(spec.get_headers.iter().cloned());
    }
    if status == 206 {
        let shift = if Counted::at(spec.wrong_content_range, resp_no).is_some() {
            4096
        } else {
            0
        };
        headers.push(h(
            "Content-Range",
            format!("bytes {}-{}/{total}", start + shift, end - 1 + shift),
        ));
    }
    let len = end - start;
    let mut close_after = false;
    match spec.no_length {
        Some(NoLength::Chunked) => headers.push(h("Transfer-Encoding", "chunked")),
        Some(NoLength::CloseDelimited) => {
            headers.push(h("Connection", "close"));
            close_after = true;
        }
        None => {
            let claimed = match Counted::at(spec.length_lie, resp_no) {
                Some(delta) => {
                    close_after = true;
                    len.saturating_add_signed(delta)
                }
                None => len,
            };
            headers.push(h("Content-Length", claimed.to_string()));
        }
    }
    if out.head(status, &headers).await.is_err() {
        return After::Close;
    }
    if is_head {
        return if close_after {
            After::Close
        } else {
            After::KeepAlive
        };
    }

    // How much of the body goes out, and what happens after.
    let mut send = len;
    let mut then = if close_after { End::Close } else { End::Done };
    if let Some(missing) = Counted::at(spec.short_body, resp_no) {
        send = len.saturating_sub(missing);
        then = End::Close;
    }
    if let Some(k) = Counted::at(spec.cut_after, resp_no)
        && k < send
    {
        send = k;
        then = End::Close;
    }
    if let Some(k) = Counted::at(spec.stall_after, resp_no)
        && k < send
    {
        send = k;
        then = End::Stall;
    }
    let rate = match spec.slow_range {
        Some((from, slow)) if bounds.is_some() && start >= from => slow,
        _ => spec.rate,
    };

    let _guard = Active::enter(shared, file, &head.target);
    let chunked = spec.no_length == Some(NoLength::Chunked);
    if send_body(out, file, spec.seed, version, start, send, rate, chunked)
        .await
        .is_err()
    {
        return After::Close;
    }
    match then {
        End::Done => {
            if chunked && out.wr.write_all(b"0\r\n\r\n").await.is_err() {
                return After::Close;
            }
            After::KeepAlive
        }
        End::Close => After::Close,
        End::Stall => {
            let _ = out.wr.flush().await;
            wait_for_close(rd).await;
            After::Close
        }
    }
}

/// Hold the connection open without sending, until the client gives up and closes it.
async fn wait_for_close(rd: &mut BufReader<OwnedReadHalf>) {
    let mut buf = [0u8; 4096];
    while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
}

enum End {
    Done,
    Close,
    Stall,
}

#[allow(clippy::too_many_arguments)]
async fn send_body(
    out: &mut Out<'_>,
    file: &FileState,
    seed: u64,
    version: u32,
    start: u64,
    len: u64,
    rate: u64,
    chunked: bool,
) -> std::io::Result<()> {
    // Under a cap, write about 20 slices a second and pace them against the clock since the first byte, so the
    // average holds however the scheduler jitters.
    let chunk = if rate > 0 {
        (rate / 20).clamp(1024, CHUNK as u64) as usize
    } else {
        CHUNK
    };
    let began = tokio::time::Instant::now();
    let mut buf = vec![0u8; chunk];
    let mut sent = 0u64;
    while sent < len {
        let n = chunk.min((len - sent) as usize);
        if rate > 0 {
            let due = began + Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
        fill(seed, version, start + sent, &mut buf[..n]);
        if chunked {
            out.wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            out.wr.write_all(&buf[..n]).await?;
            out.wr.write_all(b"\r\n").await?;
        } else {
            out.wr.write_all(&buf[..n]).await?;
        }
        out.count_body(file, n as u64);
        sent += n as u64;
    }
    Ok(())
}

/// Counts a body response as in flight for as long as it lives (a cut or aborted response included).
struct Active<'a> {
    shared: &'a Shared,
    file: &'a FileState,
    path: String,
}

impl<'a> Active<'a> {
    fn enter(shared: &'a Shared, file: &'a FileState, path: &str) -> Active<'a> {
        let now = file.active.fetch_add(1, Ordering::SeqCst) + 1;
        file.peak_active.fetch_max(now, Ordering::SeqCst);
        let mut paths = lock(&shared.active_paths);
        *paths.entry(path.to_string()).or_default() += 1;
        let files = paths.values().filter(|&&n| n > 0).count() as u32;
        shared.peak_paths.fetch_max(files, Ordering::SeqCst);
        Active {
            shared,
            file,
            path: path.to_string(),
        }
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.file.active.fetch_sub(1, Ordering::SeqCst);
        if let Some(n) = lock(&self.shared.active_paths).get_mut(&self.path) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed response: status, lowercased headers, body as read until the framing (or EOF) ended it.
    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Send one request on `stream` and read its response, following `Content-Length`, chunked framing or EOF.
    async fn exchange(
        stream: &mut BufReader<TcpStream>,
        method: &str,
        path: &str,
        extra: &[&str],
    ) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for line in extra {
            req.push_str(line);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream.get_mut().write_all(req.as_bytes()).await.unwrap();
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            stream.read_line(&mut line).await.unwrap();
            let t = line.trim_end();
            if t.is_empty() {
                break;
            }
            let (n, v) = t.split_once(':').unwrap();
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if method == "HEAD" {
            return resp;
        }
        if let Some(n) = resp.header("content-length") {
            let n: usize = n.parse().unwrap();
            let mut body = vec![0; n];
            let mut got = 0;
            while got < n {
                match stream.read(&mut body[got..]).await.unwrap() {
                    0 => break,
                    k => got += k,
                }
            }
            body.truncate(got);
            resp.body = body;
        } else if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                line.clear();
                stream.read_line(&mut line).await.unwrap();
                let n = usize::from_str_radix(line.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                stream.read_exact(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                resp.body.extend_from_slice(&chunk[..n]);
            }
        } else {
            stream.read_to_end(&mut resp.body).await.unwrap();
        }
        resp
    }

    async fn connect(server: &TestServer) -> BufReader<TcpStream> {
        BufReader::new(TcpStream::connect(server.addr()).await.unwrap())
    }

    async fn get(server: &TestServer, path: &str, extra: &[&str]) -> Resp {
        exchange(&mut connect(server).await, "GET", path, extra).await
    }

    #[test]
    fn content_is_deterministic_and_seekable() {
        let whole = expected_bytes(9, 0, 1000);
        assert_eq!(whole, expected_bytes(9, 0, 1000));
        assert_ne!(whole, expected_bytes(10, 0, 1000));
        assert_ne!(whole, expected_bytes(9, 1, 1000));
        for offset in [0, 1, 7, 8, 13, 500] {
            let mut part = vec![0; 77];
            fill(9, 0, offset, &mut part);
            assert_eq!(part[..], whole[offset as usize..offset as usize + 77]);
        }
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn serves_whole_file_and_ranges_with_correct_headers() {
        let server = TestServer::start().await;
        let file = server.serve("/f.bin", FileSpec::new(100_000).seed(1));
        let whole = get(&server, "/f.bin", &[]).await;
        assert_eq!(whole.status, 200);
        assert_eq!(whole.header("accept-ranges"), Some("bytes"));
        assert_eq!(whole.body, file.bytes());

        let part = get(&server, "/f.bin", &["Range: bytes=10-19"]).await;
        assert_eq!(part.status, 206);
        assert_eq!(part.header("content-range"), Some("bytes 10-19/100000"));
        assert_eq!(part.body, file.bytes()[10..20]);

        let open = get(&server, "/f.bin", &["Range: bytes=99990-"]).await;
        assert_eq!(
            open.header("content-range"),
            Some("bytes 99990-99999/100000")
        );
        assert_eq!(open.body.len(), 10);

        let suffix = get(&server, "/f.bin", &["Range: bytes=-5"]).await;
        assert_eq!(suffix.body, file.bytes()[99_995..]);

        let past = get(&server, "/f.bin", &["Range: bytes=100000-"]).await;
        assert_eq!(past.status, 416);
        assert_eq!(past.header("content-range"), Some("bytes */100000"));

        let log = file.requests();
        assert_eq!(log.len(), 5);
        assert_eq!(log[1].range(), Some((10, Some(19))));
        assert_eq!(log[2].range_start(), Some(99_990));
        assert_eq!(log[0].status, 200);
        assert_eq!(log[0].body_bytes, 100_000);
    }

    #[tokio::test]
    async fn keep_alive_reuses_one_connection() {
        let server = TestServer::start().await;
        let file = server.serve("/k", FileSpec::new(5000));
        let mut conn = connect(&server).await;
        let a = exchange(&mut conn, "HEAD", "/k", &[]).await;
        assert_eq!(a.header("content-length"), Some("5000"));
        let b = exchange(&mut conn, "GET", "/k", &["Range: bytes=0-99"]).await;
        let c = exchange(&mut conn, "GET", "/k", &[]).await;
        assert_eq!(b.body, file.bytes()[..100]);
        assert_eq!(c.body, file.bytes());
        let conns: Vec<u64> = file.requests().iter().map(|r| r.conn).collect();
        assert_eq!(conns, vec![conns[0]; 3]);
    }

    #[tokio::test]
    async fn no_ranges_no_head_and_no_length() {
        let server = TestServer::start().await;
        let plain = server.serve("/p", FileSpec::new(3000).no_ranges().no_head());
        let r = get(&server, "/p", &["Range: bytes=10-19"]).await;
        assert_eq!((r.status, r.body.len()), (200, 3000));
        assert_eq!(r.header("accept-ranges"), None);
        server.serve("/liar", FileSpec::new(3000).ignore_ranges());
        let r = get(&server, "/liar", &["Range: bytes=10-19"]).await;
        assert_eq!((r.status, r.body.len()), (200, 3000));
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        let mut conn = connect(&server).await;
        assert_eq!(exchange(&mut conn, "HEAD", "/p", &[]).await.status, 405);

        let chunked = server.serve("/c", FileSpec::new(200_000).no_length(NoLength::Chunked));
        let r = get(&server, "/c", &[]).await;
        assert_eq!(r.header("content-length"), None);
        assert_eq!(r.body, chunked.bytes());

        let eof = server.serve(
            "/e",
            FileSpec::new(200_000).no_length(NoLength::CloseDelimited),
        );
        let r = get(&server, "/e", &[]).await;
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(r.body, eof.bytes());
        assert_eq!(plain.requests().len(), 2);
    }

    #[tokio::test]
    async fn status_faults_count_requests() {
        let server = TestServer::start().await;
        let busy = server.serve(
            "/b",
            FileSpec::new(10).status_first(2, 503).retry_after("1"),
        );
        let r = get(&server, "/b", &[]).await;
        assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
        assert_eq!(get(&server, "/b", &[]).await.status, 503);
        let r = get(&server, "/b", &[]).await;
        assert_eq!((r.status, r.body), (200, busy.bytes()));

        server.serve("/gone", FileSpec::new(10).status_always(410));
        assert_eq!(get(&server, "/gone", &[]).await.status, 410);
        // An error answer to HEAD has no body, so the next request on the connection reads a clean response.
        let mut conn = connect(&server).await;
        assert_eq!(exchange(&mut conn, "HEAD", "/gone", &[]).await.status, 410);
        let after = exchange(&mut conn, "GET", "/gone", &[]).await;
        assert_eq!((after.status, after.body), (410, b"go away\n".to_vec()));

        server.serve("/later", FileSpec::new(10).status_after(1, 1, 503));
        let codes = [
            get(&server, "/later", &[]).await.status,
            get(&server, "/later", &[]).await.status,
            get(&server, "/later", &[]).await.status,
        ];
        assert_eq!(codes, [200, 503, 200]);
        assert_eq!(get(&server, "/nothing-here", &[]).await.status, 404);

        server.serve("/private", FileSpec::new(10).require_cookie("session=abc"));
        assert_eq!(get(&server, "/private", &[]).await.status, 403);
        let ok = get(&server, "/private", &["Cookie: a=1; session=abc"]).await;
        assert_eq!(ok.status, 200);
    }

    #[tokio::test]
    async fn cut_and_short_bodies_end_early_then_recover() {
        let server = TestServer::start().await;
        let file = server.serve("/cut", FileSpec::new(100_000).cut_after(1000, 1));
        let r = get(&server, "/cut", &[]).await;
        assert_eq!(r.header("content-length"), Some("100000"));
        assert_eq!(r.body, file.bytes()[..1000]);
        assert_eq!(get(&server, "/cut", &[]).await.body, file.bytes());

        let short = server.serve("/short", FileSpec::new(5000).short_body(100, ALWAYS));
        let r = get(&server, "/short", &["Range: bytes=1000-1999"]).await;
        assert_eq!(r.header("content-length"), Some("1000"));
        assert_eq!(r.body, short.bytes()[1000..1900]);
    }

    #[tokio::test]
    async fn stall_sends_some_bytes_then_nothing() {
        let server = TestServer::start().await;
        let file = server.serve("/s", FileSpec::new(100_000).stall_after(500, 1));
        let mut conn = connect(&server).await;
        conn.get_mut()
            .write_all(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_millis(700), async {
            let mut buf = [0; 4096];
            loop {
                let n = conn.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(read.is_err(), "the stalled response must not end");
        assert!(got.ends_with(&file.bytes()[..500]));
        assert_eq!(file.active(), 1);
        drop(conn);
        assert_eq!(get(&server, "/s", &[]).await.body, file.bytes());
    }

    #[tokio::test]
    async fn hang_sends_nothing_then_serves_again() {
        let server = TestServer::start().await;
        let file = server.serve("/h", FileSpec::new(100).hang_after(0, 1));
        let mut conn = connect(&server).await;
        conn.get_mut()
            .write_all(b"GET /h HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0; 16];
        let read = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await;
        assert!(read.is_err(), "a hung request was answered");
        drop(conn);
        assert_eq!(get(&server, "/h", &[]).await.body, file.bytes());
    }

    #[tokio::test]
    async fn validators_change_with_content_and_gate_if_range() {
        let server = TestServer::start().await;
        let file = server.serve("/v", FileSpec::new(4096).etag().last_modified());
        let first = get(&server, "/v", &[]).await;
        let etag = first.header("etag").unwrap().to_string();
        assert_eq!(etag, file.etag());
        let with = format!("If-Range: {etag}");
        let r = get(&server, "/v", &["Range: bytes=0-9", &with]).await;
        assert_eq!(r.status, 206);

        file.change_content();
        assert_eq!(file.version(), 1);
        let r = get(&server, "/v", &["Range: bytes=0-9", &with]).await;
        assert_eq!(r.status, 200, "a stale If-Range gets the whole new file");
        assert_eq!(r.body, file.bytes_of_version(1));
        assert_ne!(r.header("etag").unwrap(), etag);
        assert_ne!(r.header("last-modified"), first.header("last-modified"));
        let stale = format!("If-Match: {etag}");
        assert_eq!(get(&server, "/v", &[&stale]).await.status, 412);

        let auto = server.serve("/auto", FileSpec::new(64).etag().content_changes_after(1));
        let a = get(&server, "/auto", &[]).await;
        let b = get(&server, "/auto", &[]).await;
        assert_eq!(a.body, auto.bytes_of_version(0));
        assert_eq!(b.body, auto.bytes_of_version(1));
    }

    #[tokio::test]
    async fn lies_on_ranged_requests() {
        let server = TestServer::start().await;
        let f = server.serve("/wrong", FileSpec::new(50_000).wrong_content_range(1));
        let r = get(&server, "/wrong", &["Range: bytes=100-199"]).await;
        assert_eq!(r.header("content-range"), Some("bytes 4196-4295/50000"));
        assert_eq!(r.body, f.bytes()[100..200]);

        let f = server.serve("/capped", FileSpec::new(50_000).max_range(1000));
        let r = get(&server, "/capped", &["Range: bytes=100-"]).await;
        assert_eq!(r.header("content-range"), Some("bytes 100-1099/50000"));
        assert_eq!(r.body, f.bytes()[100..1100]);

        let f = server.serve("/extra", FileSpec::new(50_000).extra_bytes(50, 1));
        let r = get(&server, "/extra", &["Range: bytes=100-199"]).await;
        assert_eq!(r.header("content-range"), Some("bytes 100-249/50000"));
        assert_eq!(r.body, f.bytes()[100..250]);

        server.serve("/html", FileSpec::new(50_000).html_on_range(1));
        let r = get(&server, "/html", &["Range: bytes=100-199"]).await;
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some("text/html"))
        );
        assert!(r.body.starts_with(b"<!DOCTYPE html>"));

        let f = server.serve("/lie", FileSpec::new(1000).length_lie(500, 1));
        let r = get(&server, "/lie", &[]).await;
        assert_eq!(r.header("content-length"), Some("1500"));
        assert_eq!(r.body, f.bytes());
    }

    #[tokio::test]
    async fn hostile_headers_go_out_byte_for_byte() {
        let server = TestServer::start().await;
        let value = b"attachment; filename=\"a\x01b\x1bc.txt\"".to_vec();
        server.serve("/cd", FileSpec::new(10).content_disposition(value));
        let mut conn = connect(&server).await;
        conn.get_mut()
            .write_all(b"HEAD /cd HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            conn.read_until(b'\n', &mut head).await.unwrap();
        }
        let needle = b"Content-Disposition: attachment; filename=\"a\x01b\x1bc.txt\"\r\n";
        assert!(head.windows(needle.len()).any(|w| w == needle));
    }

    #[tokio::test]
    async fn rate_cap_paces_and_slow_range_only_slows_the_tail() {
        let server = TestServer::start().await;
        let file = server.serve("/r", FileSpec::new(400_000).slow_range(300_000, 200_000));
        let t = Instant::now();
        let fast = get(&server, "/r", &["Range: bytes=0-299999"]).await;
        let fast_time = t.elapsed();
        let t = Instant::now();
        let slow = get(&server, "/r", &["Range: bytes=300000-"]).await;
        let slow_time = t.elapsed();
        assert_eq!(fast.body, file.bytes()[..300_000]);
        assert_eq!(slow.body, file.bytes()[300_000..]);
        assert!(slow_time >= Duration::from_millis(400), "{slow_time:?}");
        assert!(fast_time < Duration::from_millis(400), "{fast_time:?}");
    }

    #[tokio::test]
    async fn redirects_and_concurrency_are_recorded() {
        let server = TestServer::start().await;
        let file = server.serve("/target", FileSpec::new(300_000).rate(1_000_000));
        server.redirect("/from", "/target");
        let r = get(&server, "/from", &[]).await;
        assert_eq!(r.status, 302);
        assert_eq!(r.header("location"), Some(server.url("/target").as_str()));

        let (a, b) = tokio::join!(
            get(&server, "/target", &["Range: bytes=0-149999"]),
            get(&server, "/target", &["Range: bytes=150000-"])
        );
        assert_eq!([a.body, b.body].concat(), file.bytes());
        assert_eq!(file.peak_active(), 2);
        assert_eq!(file.peak_data_connections(100_000), 2);
        assert_eq!(file.peak_data_connections(200_000), 0);
        assert_eq!(file.active(), 0);
        assert_eq!(server.peak_files_at_once(), 1);
        assert_eq!(server.requests()[0].path, "/from");
    }

    #[tokio::test]
    async fn dropping_the_server_closes_its_connections() {
        let server = TestServer::start().await;
        server.serve("/s", FileSpec::new(100).stall_after(10, ALWAYS));
        let mut conn = connect(&server).await;
        conn.get_mut()
            .write_all(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut line = String::new();
        conn.read_line(&mut line).await.unwrap();
        let addr = server.addr();
        drop(server);
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "connection still open after drop");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
