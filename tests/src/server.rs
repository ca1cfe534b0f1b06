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
//!
//! Here: the server, its files' content and the request log; `spec.rs`: [`FileSpec`], how a file misbehaves;
//! `wire.rs`: one connection, each request answered as its file's spec says; `tls.rs`: [`TlsFront`], https in front
//! of a server, with a good or a bad certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub use spec::{FileSpec, NoLength};
pub use tls::{Cert, FrontLog, FrontSpec, TlsFront, test_ca_der, test_ca_pem};

mod spec;
mod tls;
mod wire;

/// "For every request", where a fault takes a count of requests it applies to.
pub const ALWAYS: u32 = u32::MAX;

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
        header(&self.headers, &name.to_ascii_lowercase())
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

    /// A GET for the first byte alone (`bytes=0-0`): the engine's look at a file (a verified add, a new address),
    /// not a fetch of its bytes.
    pub fn is_look(&self) -> bool {
        self.method == "GET" && self.range() == Some((0, Some(0)))
    }
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

/// The value of the header `name` (lowercase) among `headers` (lowercase names).
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
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
                conns.spawn(wire::connection(stream, id, Instant::now(), shared.clone()));
            }
            Some(_) = conns.join_next() => {}
        }
    }
}

#[cfg(test)]
mod tests;
