//! Ranged GETs over our own socket: over plain HTTP the bodies never enter the process (socket → pipe → file with
//! splice(2)); over https they are decrypted by [`super::tls`] into a buffer of ours and written from there.
//!
//! On a fast link most of a download's CPU is the kernel copying bytes, once from the socket into the process and
//! once from the process into the page cache. splice(2) hands the socket's pages to a pipe and copies them from the
//! pipe into the file, so the first copy and the syscalls that go with it disappear (BENCHMARKS.md has the numbers).
//! TLS bodies must pass through the process to be decrypted; owning the socket saves them reqwest's and rustls's
//! copies and their record-at-a-time reads.
//!
//! This path is taken only where it is plainly the same as reqwest's: an `http://` or `https://` URL, no proxy in the
//! environment, and an answer that is a `206` framed by `Content-Length`. Every other answer is read the same way as
//! reqwest's (status, headers) and judged by the same code; what this path cannot carry (a redirect, a chunked or
//! unframed body, an interim 1xx) is reported as [`Answer::NotHere`], and the transfer goes back to reqwest for good.

use std::fs::File;
use std::io::{self, ErrorKind, IoSlice};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use rustix::pipe::{PipeFlags, SpliceFlags};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::{Host, Position, Url};

use super::probe;
use super::response::content_length;
use super::tls::{MAX_PIECES, Tls};

/// The largest response head read; a longer one is malformed.
const MAX_HEAD: usize = 64 * 1024;
/// How much a pipe holds; one stage moves at most this much.
const PIPE_SIZE: usize = 1 << 20;
/// While at least this much of a body is still to come and it comes fast, the socket wakes its reader only once this
/// much has arrived (`SO_RCVLOWAT`): a reader faster than the server was woken for about every 16 KiB record, with a
/// syscall that found nothing after each read. 64 KiB is one TLS read ([`super::tls`]); 256 KiB measured the same.
const WAKE_AFTER: usize = 64 * 1024;
/// "Fast": a body's last [`WAKE_AFTER`] bytes were read within this time (1.3 MB/s and more). A slower connection is
/// woken for every byte, so its progress shows as it comes and the stall timeout (1 s at least) never waits on a batch.
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// Like reqwest's client (see [`super::probe::client`]).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const USER_AGENT: &str = concat!("sdm/", env!("CARGO_PKG_VERSION"));

/// Whether requests for `url` may take this path: HTTP or https, and no proxy configured for its scheme (reqwest
/// would use one).
pub fn eligible(url: &Url) -> bool {
    let proxies: &[&str] = match url.scheme() {
        "http" => &["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"],
        "https" => &["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"],
        _ => return false,
    };
    let proxied = proxies
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    url.host().is_some() && !proxied
}

/// One transfer's use of this path: whether it is still on, and the connections it opened ahead of its first requests.
#[derive(Debug, Default)]
pub struct Route {
    /// The server answered with something only reqwest carries (a redirect, a chunked body): every later request of
    /// the transfer goes through reqwest.
    off: AtomicBool,
    /// Whether https goes this way too: decided once the file's size is known ([`Route::allow_tls`]).
    tls: AtomicBool,
    /// Connections opened while the probe was out, one for the first request of each of the transfer's connections.
    spare: Mutex<Vec<JoinHandle<io::Result<Conn>>>>,
}

impl Route {
    pub fn is_off(&self) -> bool {
        self.off.load(Ordering::Relaxed)
    }

    pub fn turn_off(&self) {
        self.off.store(true, Ordering::Relaxed);
    }

    /// Let https bodies take this path (or not): the transfer decides by the file's size.
    pub fn allow_tls(&self, on: bool) {
        self.tls.store(on, Ordering::Relaxed);
    }

    /// Whether this route carries `url`'s scheme now: plain http always, https once allowed.
    pub fn carries(&self, url: &Url) -> bool {
        url.scheme() != "https" || self.tls.load(Ordering::Relaxed)
    }

    fn spare(&self) -> MutexGuard<'_, Vec<JoinHandle<io::Result<Conn>>>> {
        self.spare.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start opening `n` connections to `url` for later requests.
    pub fn open_spares(&self, url: &Url, n: u32) {
        let mut spare = self.spare();
        for _ in 0..n {
            let url = url.clone();
            spare.push(tokio::spawn(async move { open(&url).await }));
        }
    }

    /// Keep the first `n` spare connections; close the rest, or stop opening them.
    pub fn keep_spares(&self, n: usize) {
        let mut spare = self.spare();
        let n = n.min(spare.len());
        for h in spare.drain(n..) {
            h.abort();
        }
    }

    /// A spare connection, once it is open; `None` when none is left or it failed to open (the request then opens its
    /// own).
    pub async fn take_spare(&self, stop: &CancellationToken) -> Option<Conn> {
        let pending = self.spare().pop()?;
        tokio::select! {
            _ = stop.cancelled() => None,
            r = pending => r.ok()?.ok(),
        }
    }
}

/// A kept-alive connection, reused by the next request to the same scheme, host and port: its pipe over HTTP, its
/// TLS session over https.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    authority: (String, String, u16),
    pipe: Option<(OwnedFd, OwnedFd)>,
    tls: Option<Box<Tls>>,
    waking: Waking,
}

/// When a connection's socket wakes its reader: for every byte, or for a batch ([`WAKE_AFTER`]) while the body owes
/// that much and comes fast. The pace is judged a batch at a time, not a read at a time: a slow link's bytes come in
/// bursts (a round trip's worth, a server catching up), and reads within a burst look fast.
#[derive(Debug)]
struct Waking {
    /// The socket's receive low-water mark as last set: [`WAKE_AFTER`], or one byte (the system's default).
    batched: bool,
    /// Since when the bytes of the batch being judged have come (none before a body's first read).
    since: Option<Instant>,
    /// Bytes read since then.
    bytes: usize,
    /// The last batch judged came within [`BATCH_WAIT`].
    fast: bool,
}

impl Waking {
    fn new() -> Waking {
        Waking {
            batched: false,
            since: None,
            bytes: 0,
            fast: false,
        }
    }
}

impl Conn {
    /// Before reading an answer's head, whose length is not known: wake for every byte (the last body may have ended
    /// in one read, its mark still up), and forget that body's pace.
    fn before_head(&mut self) -> io::Result<()> {
        self.waking = Waking {
            batched: self.waking.batched,
            ..Waking::new()
        };
        self.set_batched(false)
    }

    /// Before a read of a body of which the peer still owes at least `bytes`: wake for a batch only while that many
    /// are still to come and they come fast, so the body's last bytes and a slow link wake the reader as they come.
    fn before_read(&mut self, bytes: u64) -> io::Result<()> {
        let batch = self.waking.fast && bytes >= WAKE_AFTER as u64 && self.roomy()?;
        self.set_batched(batch)
    }

    /// Whether the receive buffer has room for several batches. Linux makes a mark that the buffer would barely hold
    /// the window's clamp (`tcp_set_rcvlowat`), and the window could stay that small on a long link; from four batches
    /// on (the buffer counts overhead too, usually under half of it) the mark leaves the window alone. Asked only
    /// while the mark is down and would go up.
    fn roomy(&self) -> io::Result<bool> {
        if self.waking.batched {
            return Ok(true);
        }
        Ok(rustix::net::sockopt::socket_recv_buffer_size(&self.stream)? >= 4 * WAKE_AFTER)
    }

    fn set_batched(&mut self, batched: bool) -> io::Result<()> {
        if batched != self.waking.batched {
            set_rcvlowat(&self.stream, if batched { WAKE_AFTER } else { 1 })?;
            self.waking.batched = batched;
        }
        Ok(())
    }

    /// After a read of `n` bytes of a body: a batch is judged once it is whole, or once [`BATCH_WAIT`] has passed
    /// without it.
    fn after_read(&mut self, n: usize) {
        let w = &mut self.waking;
        let now = Instant::now();
        let Some(since) = w.since else {
            // The body's first read: what came during the round trip says nothing of the pace.
            w.since = Some(now);
            return;
        };
        w.bytes += n;
        let took = now.duration_since(since);
        if w.bytes >= WAKE_AFTER || took > BATCH_WAIT {
            w.fast = w.bytes >= WAKE_AFTER && took <= BATCH_WAIT;
            w.since = Some(now);
            w.bytes = 0;
        }
    }
}

/// Set `stream`'s `SO_RCVLOWAT` (neither rustix nor socket2 has it). Linux's epoll honours it for TCP, and a
/// non-blocking read still returns whatever has arrived.
fn set_rcvlowat(stream: &TcpStream, bytes: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is the stream's own, open for as long as it is borrowed; the option's value is a C int
    // that lives across the call, and its size is passed with it.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What the server answered.
pub enum Answer {
    /// A `206` with a `Content-Length`: its status, headers and body.
    Body(StatusCode, HeaderMap, Body),
    /// Any other final answer, whose body is not read: the connection is dropped.
    Other(StatusCode, HeaderMap),
    /// Something this path does not carry; ask reqwest.
    NotHere,
}

/// Send a GET for `url` with `headers` (on `reuse` when it goes to the same place) and read the answer's head. The
/// caller bounds the time this takes.
pub async fn get(reuse: Option<Conn>, url: &Url, headers: &HeaderMap) -> io::Result<Answer> {
    let request = request_head(url, headers);
    if let Some(conn) = reuse.filter(|c| c.authority == authority(url)) {
        // The server may have closed an idle connection; only then is it worth one more try on a new one.
        match exchange(conn, &request).await {
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                ) => {}
            other => return other,
        }
    }
    exchange(open(url).await?, &request).await
}

/// A new connection to `url`'s host and port, its TLS handshake done over https, for [`get`] to send on.
pub async fn open(url: &Url) -> io::Result<Conn> {
    let (stream, tls) = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let stream = connect(url).await?;
        stream.set_nodelay(true)?;
        let tls = match url.scheme() {
            "https" => Some(Box::new(handshake(&stream, url).await?)),
            _ => None,
        };
        Ok::<_, io::Error>((stream, tls))
    })
    .await
    .map_err(|_| io::Error::new(ErrorKind::TimedOut, "connect timed out"))??;
    Ok(Conn {
        stream,
        authority: authority(url),
        pipe: None,
        tls,
        waking: Waking::new(),
    })
}

fn authority(url: &Url) -> (String, String, u16) {
    (
        url.scheme().to_string(),
        url.host_str().unwrap_or_default().to_string(),
        url.port_or_known_default().unwrap_or(80),
    )
}

/// The TLS session with `url`'s host on `stream`, with the configuration reqwest's client has.
async fn handshake(stream: &TcpStream, url: &Url) -> io::Result<Tls> {
    let config = probe::tls_config().map_err(io::Error::other)?;
    Tls::connect(stream, config, server_name(url)?).await
}

/// The name a certificate for `url`'s host must carry.
fn server_name(url: &Url) -> io::Result<ServerName<'static>> {
    Ok(match url.host() {
        Some(Host::Domain(d)) => ServerName::try_from(d.to_string())
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))?,
        Some(Host::Ipv4(a)) => ServerName::IpAddress(std::net::IpAddr::V4(a).into()),
        Some(Host::Ipv6(a)) => ServerName::IpAddress(std::net::IpAddr::V6(a).into()),
        None => return Err(io::Error::new(ErrorKind::InvalidInput, "URL has no host")),
    })
}

async fn connect(url: &Url) -> io::Result<TcpStream> {
    let port = url.port_or_known_default().unwrap_or(80);
    match url.host() {
        Some(Host::Domain(d)) => TcpStream::connect((d, port)).await,
        Some(Host::Ipv4(a)) => TcpStream::connect((a, port)).await,
        Some(Host::Ipv6(a)) => TcpStream::connect((a, port)).await,
        None => Err(io::Error::new(ErrorKind::InvalidInput, "URL has no host")),
    }
}

fn request_head(url: &Url, headers: &HeaderMap) -> Vec<u8> {
    let target = &url[Position::BeforePath..Position::AfterQuery];
    let host = &url[Position::BeforeHost..Position::AfterPort];
    let mut out = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\n").into_bytes();
    let mut add = |name: &HeaderName, value: &[u8]| {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    for (name, value) in headers {
        if name != header::HOST && name != header::CONNECTION {
            add(name, value.as_bytes());
        }
    }
    if !headers.contains_key(header::USER_AGENT) {
        add(&header::USER_AGENT, USER_AGENT.as_bytes());
    }
    if !headers.contains_key(header::ACCEPT) {
        add(&header::ACCEPT, b"*/*");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Send `request` on `conn` and read the answer's head.
async fn exchange(mut conn: Conn, request: &[u8]) -> io::Result<Answer> {
    conn.before_head()?;
    match &mut conn.tls {
        Some(tls) => tls.send(&conn.stream, request).await?,
        None => conn.stream.write_all(request).await?,
    }
    let mut buf = Vec::with_capacity(4096);
    loop {
        if buf.len() >= MAX_HEAD {
            return Err(malformed("response head over 64 KiB"));
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        let got = match &mut conn.tls {
            // A record at a time, so what comes after the head mostly stays in the session for the body.
            Some(tls) => {
                let n = tls.fill(&conn.stream, 1).await?;
                tls.plain().for_each(|piece| buf.extend_from_slice(piece));
                tls.consume(n);
                n
            }
            None => conn.stream.read_buf(&mut buf).await?,
        };
        if got == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let mut slots = [httparse::EMPTY_HEADER; 100];
        let mut resp = httparse::Response::new(&mut slots);
        let len = match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(malformed(&format!("cannot parse the response head: {e}"))),
        };
        let code = resp.code.unwrap_or_default();
        let status = StatusCode::from_u16(code)
            .map_err(|_| malformed(&format!("bad status code {code}")))?;
        let mut headers = HeaderMap::with_capacity(resp.headers.len());
        for h in resp.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| malformed("bad header name"))?;
            let value =
                HeaderValue::from_bytes(h.value).map_err(|_| malformed("bad header value"))?;
            headers.append(name, value);
        }
        let keep_alive = resp.version == Some(1)
            && !headers
                .get_all(header::CONNECTION)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        return Ok(answer(
            conn,
            status,
            headers,
            buf.split_off(len),
            keep_alive,
        ));
    }
}

fn answer(
    conn: Conn,
    status: StatusCode,
    headers: HeaderMap,
    prefix: Vec<u8>,
    keep_alive: bool,
) -> Answer {
    if status.is_informational() || status.is_redirection() {
        return Answer::NotHere;
    }
    if status != StatusCode::PARTIAL_CONTENT {
        return Answer::Other(status, headers);
    }
    let length = content_length(&headers);
    let (Some(length), false) = (length, headers.contains_key(header::TRANSFER_ENCODING)) else {
        return Answer::NotHere;
    };
    // Bytes past the body that came with the head mean the stream is not at a response boundary afterwards.
    let prefix_fits = prefix.len() as u64 <= length;
    let body = Body {
        conn,
        left: length,
        prefix,
        prefix_at: 0,
        staged: 0,
        whole: true,
        keep_alive: keep_alive && prefix_fits,
    };
    Answer::Body(status, headers, body)
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, what.to_string())
}

/// A response body being moved into a file: [`Body::stage`] takes bytes off the network, [`Body::commit`] writes
/// them, so a rate limiter can be charged in between.
pub struct Body {
    conn: Conn,
    /// Body bytes not yet staged.
    left: u64,
    /// Body bytes that came with the head.
    prefix: Vec<u8>,
    prefix_at: usize,
    /// Bytes taken but not yet written (in the pipe, or in `prefix`).
    staged: usize,
    /// Every staged byte so far was committed; false once a commit dropped some.
    whole: bool,
    keep_alive: bool,
}

impl Body {
    /// Take up to `max` bytes of the body; returns how many are staged for [`Body::commit`] (0 once the body is
    /// over, or the server closed early: the caller knows how much it expected).
    pub async fn stage(&mut self, max: usize) -> io::Result<usize> {
        if self.staged > 0 || !self.whole {
            // Bytes the caller dropped may still fill the pipe; waiting on the socket then would wait for nothing.
            return Err(io::Error::other(
                "internal error: staging more after a partial commit",
            ));
        }
        let in_prefix = self.prefix.len() - self.prefix_at;
        if in_prefix > 0 {
            let n = in_prefix.min(max).min(self.left as usize);
            self.staged = n;
            self.left -= n as u64;
            return Ok(n);
        }
        let want = (self.left.min(max as u64) as usize).min(PIPE_SIZE);
        if want == 0 {
            return Ok(0);
        }
        // Nothing is staged now (checked above): over plain HTTP the pipe is empty, over https the session holds
        // what has come of the body beyond what was taken.
        let here = self.conn.tls.as_ref().map_or(0, |t| t.here());
        self.conn
            .before_read(self.left.saturating_sub(here as u64))?;
        if let Some(tls) = &mut self.conn.tls {
            let n = tls.fill(&self.conn.stream, want).await?.min(want);
            self.conn.after_read(n);
            self.staged = n;
            self.left -= n as u64;
            return Ok(n);
        }
        if self.conn.pipe.is_none() {
            let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
            // A bigger pipe means fewer, larger moves; the default (64 KiB) still works if the system refuses.
            let _ = rustix::pipe::fcntl_setpipe_size(&w, PIPE_SIZE);
            self.conn.pipe = Some((r, w));
        }
        let (_, w) = self.conn.pipe.as_ref().expect("made above");
        let stream = &self.conn.stream;
        let n = loop {
            stream.readable().await?;
            match stream.try_io(Interest::READABLE, || {
                rustix::pipe::splice(stream, None, w, None, want, SpliceFlags::NONBLOCK)
                    .map_err(io::Error::from)
            }) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                r => break r?,
            }
        };
        self.conn.after_read(n);
        self.staged = n;
        self.left -= n as u64;
        Ok(n)
    }

    /// Write the first `n` staged bytes at `at` in `file`. Staged bytes beyond `n` are dropped, and the connection
    /// with them: its stream is no longer at a response boundary.
    pub fn commit(&mut self, file: &File, mut at: u64, n: usize) -> io::Result<()> {
        assert!(n <= self.staged, "commit more than staged");
        if self.prefix_at < self.prefix.len() {
            file.write_all_at(&self.prefix[self.prefix_at..self.prefix_at + n], at)?;
            self.prefix_at += self.staged;
            self.whole &= self.staged == n;
            self.staged = 0;
            return Ok(());
        }
        if let Some(tls) = &mut self.conn.tls {
            write_pieces_at(file, tls.plain(), n, at)?;
            // What a short commit leaves staged is dropped with the body, as below.
            tls.consume(self.staged);
            self.whole &= self.staged == n;
            self.staged = 0;
            return Ok(());
        }
        let (r, _) = self
            .conn
            .pipe
            .as_ref()
            .expect("staged bytes are in the pipe");
        let mut left = n;
        while left > 0 {
            match rustix::pipe::splice(r, None, file, Some(&mut at), left, SpliceFlags::MOVE) {
                Ok(0) => return Err(io::Error::other("pipe empty before the staged bytes")),
                Ok(k) => left -= k,
                // A file system that takes no splice: copy through memory instead.
                Err(rustix::io::Errno::INVAL) => {
                    let mut buf = vec![0; left];
                    let mut got = 0;
                    while got < left {
                        got += rustix::io::read(r, &mut buf[got..])?;
                    }
                    file.write_all_at(&buf, at)?;
                    left = 0;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // What a short commit leaves in the pipe belongs to no one: the body ends here, and the pipe goes with the
        // connection.
        self.whole &= self.staged == n;
        self.staged = 0;
        Ok(())
    }

    /// The connection, for the next request, when this body was read to its end, nothing came after it, and the
    /// server keeps it open.
    pub fn into_conn(self) -> Option<Conn> {
        let after = self.conn.tls.as_ref().is_some_and(|t| t.has_more());
        (self.keep_alive && self.whole && self.left == 0 && self.staged == 0 && !after)
            .then_some(self.conn)
    }
}

/// Write the first `n` bytes of `pieces` at `at` in `file`, with one `pwritev` when the file takes them all at once.
fn write_pieces_at<'a>(
    file: &File,
    pieces: impl Iterator<Item = &'a [u8]>,
    n: usize,
    mut at: u64,
) -> io::Result<()> {
    let mut slices = [IoSlice::new(&[]); MAX_PIECES];
    let mut count = 0;
    let mut left = n;
    for (slot, piece) in slices.iter_mut().zip(pieces) {
        if left == 0 {
            break;
        }
        let piece = &piece[..piece.len().min(left)];
        left -= piece.len();
        *slot = IoSlice::new(piece);
        count += 1;
    }
    if left > 0 {
        return Err(io::Error::other(
            "internal error: writing more than is held",
        ));
    }
    let mut slices = &mut slices[..count];
    while !slices.is_empty() {
        match rustix::io::pwritev(file, slices, at) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(k) => {
                at += k as u64;
                IoSlice::advance_slices(&mut slices, k);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::HandshakeKind;
    use sdm_tests::server::{Cert, FrontSpec, TlsFront};

    use super::*;

    #[test]
    fn request_head_names_the_target_host_and_defaults() {
        let url = Url::parse("http://example.com:8080/a%20b/c.bin?x=1&y=2#frag").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=5-9"));
        headers.insert(header::HOST, HeaderValue::from_static("evil.example"));
        let head = String::from_utf8(request_head(&url, &headers)).unwrap();
        assert_eq!(
            head,
            "GET /a%20b/c.bin?x=1&y=2 HTTP/1.1\r\nhost: example.com:8080\r\nrange: bytes=5-9\r\n\
             user-agent: sdm/0.1.0\r\naccept: */*\r\n\r\n"
                .replace("0.1.0", env!("CARGO_PKG_VERSION"))
        );
        let url = Url::parse("http://[::1]/f").unwrap();
        let mut with_ua = HeaderMap::new();
        with_ua.insert(header::USER_AGENT, HeaderValue::from_static("Browser/1"));
        let head = String::from_utf8(request_head(&url, &with_ua)).unwrap();
        assert!(head.starts_with("GET /f HTTP/1.1\r\nhost: [::1]\r\nuser-agent: Browser/1\r\n"));
    }

    /// A one-connection server on loopback that answers every request with a 206 of `body`.
    async fn serve_206(body: Vec<u8>) -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/f", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            loop {
                let mut buf = [0u8; 1024];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                seen.extend_from_slice(&buf[..n]);
                while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    seen.drain(..end + 4);
                    let head = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-{}/{}\r\nContent-Length: {}\r\n\r\n",
                        body.len() - 1,
                        body.len(),
                        body.len()
                    );
                    sock.write_all(head.as_bytes()).await.unwrap();
                    sock.write_all(&body).await.unwrap();
                }
            }
        });
        url
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_body_is_spliced_whole_and_its_connection_kept() {
        let body = pattern(3 << 20);
        let url = serve_206(body.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("out"))
            .unwrap();
        let mut conn = None;
        for _ in 0..2 {
            let Answer::Body(status, _, mut b) =
                get(conn.take(), &url, &HeaderMap::new()).await.unwrap()
            else {
                panic!("not a body");
            };
            assert_eq!(status, StatusCode::PARTIAL_CONTENT);
            let mut at = 0;
            loop {
                let n = b.stage(1 << 20).await.unwrap();
                if n == 0 {
                    break;
                }
                b.commit(&file, at, n).unwrap();
                at += n as u64;
            }
            assert_eq!(at, body.len() as u64);
            conn = b.into_conn();
            assert!(
                conn.is_some(),
                "a body read to its end keeps its connection"
            );
        }
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), body);
    }

    #[tokio::test]
    async fn after_a_short_commit_the_body_refuses_more_and_drops_its_connection() {
        let url = serve_206(pattern(4 << 20)).await;
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("out")).unwrap();
        let Answer::Body(_, _, mut b) = get(None, &url, &HeaderMap::new()).await.unwrap() else {
            panic!("not a body");
        };
        // Skip what came with the head, so the next stage fills the pipe.
        let mut at = 0;
        while b.prefix_at < b.prefix.len() {
            let n = b.stage(1 << 20).await.unwrap();
            b.commit(&file, at, n).unwrap();
            at += n as u64;
        }
        let staged = b.stage(1 << 20).await.unwrap();
        assert!(staged > 1);
        b.commit(&file, at, 1).unwrap();
        // The rest of the staged bytes still fill the pipe: staging again must fail at once, not wait on the socket.
        let again = tokio::time::timeout(Duration::from_secs(5), b.stage(1 << 20))
            .await
            .expect("staging after a short commit returns at once");
        assert!(again.is_err());
        assert!(b.into_conn().is_none());
    }

    /// Read `b` to its end into `file` at `at`; where it stopped.
    async fn drain(b: &mut Body, file: &File, mut at: u64) -> u64 {
        loop {
            let n = b.stage(1 << 20).await.unwrap();
            if n == 0 {
                return at;
            }
            b.commit(file, at, n).unwrap();
            at += n as u64;
        }
    }

    fn ranged(from: u64, to: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        let range = format!("bytes={from}-{to}");
        h.insert(header::RANGE, HeaderValue::from_str(&range).unwrap());
        h
    }

    fn trust_test_ca() {
        probe::trust_extra_roots(vec![sdm_tests::server::test_ca_der()]);
    }

    #[tokio::test]
    async fn a_tls_body_is_written_whole_and_its_connection_kept() {
        let server = sdm_tests::TestServer::start().await;
        let front = TlsFront::start(&server, Cert::Good).await;
        two_bodies_on_one_connection(&server, &front).await;
    }

    /// Each cipher suite rustls offers with ring that fits the test certificate (TLS 1.3's three, TLS 1.2's three
    /// ECDSA ones): bodies written whole, and a second request on the same connection (the sequence numbers carry on
    /// in both directions).
    #[tokio::test]
    async fn every_cipher_suite_of_both_versions_carries_bodies_on_one_connection() {
        let mut carried = Vec::new();
        for suite in rustls::crypto::ring::ALL_CIPHER_SUITES {
            let server = sdm_tests::TestServer::start().await;
            let spec = FrontSpec {
                suite: Some(*suite),
                ..FrontSpec::new(Cert::Good)
            };
            let front = TlsFront::start_spec(&server, spec).await;
            if !two_bodies_on_one_connection(&server, &front).await {
                // An RSA suite: the test certificate's key is ECDSA, so the server cannot agree to it.
                continue;
            }
            let log = front.log();
            assert!(log.errors.is_empty(), "{suite:?}: {:?}", log.errors);
            carried.push(suite.suite());
        }
        // TLS 1.3's three, and TLS 1.2's three ECDSA ones.
        assert_eq!(carried.len(), 6, "{carried:?}");
    }

    /// A TLS 1.3 server that refreshes its keys every 256 KiB and asks for ours: the body is followed across every
    /// update, and our answer (a key update under the old keys, then our records under the new) is what the server
    /// expects, or it could not open the second request.
    #[tokio::test]
    async fn a_servers_key_updates_are_followed_and_answered() {
        let server = sdm_tests::TestServer::start().await;
        let spec = FrontSpec {
            key_update_every: Some(256 << 10),
            ..FrontSpec::new(Cert::Good)
        };
        let front = TlsFront::start_spec(&server, spec).await;
        assert!(two_bodies_on_one_connection(&server, &front).await);
        let log = front.log();
        assert!(log.key_updates >= 8, "{log:?}");
        assert!(log.errors.is_empty(), "{:?}", log.errors);
    }

    /// The session tickets a TLS 1.3 server sends after the handshake reach rustls's store from this path too: the
    /// next connection's handshake resumes instead of doing the full one.
    #[tokio::test]
    async fn tickets_taken_on_this_path_let_the_next_handshake_resume() {
        trust_test_ca();
        let server = sdm_tests::TestServer::start().await;
        let file = server.serve("/f", sdm_tests::FileSpec::new(100_000).seed(4));
        let front = TlsFront::start(&server, Cert::Good).await;
        let url = Url::parse(&front.url("/f")).unwrap();
        // A store of its own: the process's is shared with every other test of this binary.
        let mut config = (*probe::tls_config().unwrap()).clone();
        config.resumption = rustls::client::Resumption::in_memory_sessions(4);
        let config = Arc::new(config);
        let dir = tempfile::tempdir().unwrap();
        let out = File::create(dir.path().join("out")).unwrap();
        for _ in 0..2 {
            let stream = connect(&url).await.unwrap();
            let name = server_name(&url).unwrap();
            let tls = Tls::connect(&stream, config.clone(), name).await.unwrap();
            let conn = Conn {
                stream,
                authority: authority(&url),
                pipe: None,
                tls: Some(Box::new(tls)),
                waking: Waking::new(),
            };
            let request = request_head(&url, &ranged(0, 99_999));
            let Answer::Body(_, _, mut b) = exchange(conn, &request).await.unwrap() else {
                panic!("not a body");
            };
            assert_eq!(drain(&mut b, &out, 0).await, 100_000);
        }
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), file.bytes());
        assert_eq!(
            front.log().handshakes,
            [HandshakeKind::Full, HandshakeKind::Resumed]
        );
    }

    /// Two ranged requests for a 3 MiB file over one connection to `front` (https in front of `server`), each body
    /// checked; false if the handshake failed for want of a cipher suite both sides have.
    async fn two_bodies_on_one_connection(
        server: &sdm_tests::TestServer,
        front: &TlsFront,
    ) -> bool {
        trust_test_ca();
        let file = server.serve("/f", sdm_tests::FileSpec::new(3 << 20).seed(3));
        let url = Url::parse(&front.url("/f")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = File::create(dir.path().join("out")).unwrap();
        let mut conn = None;
        for (from, to) in [(0, (1 << 20) - 1), (1 << 20, (3 << 20) - 1)] {
            let answer = match get(conn.take(), &url, &ranged(from, to)).await {
                Err(e) if from == 0 && e.to_string().contains("HandshakeFailure") => return false,
                answer => answer.unwrap(),
            };
            let Answer::Body(status, _, mut b) = answer else {
                panic!("not a body");
            };
            assert_eq!(status, StatusCode::PARTIAL_CONTENT);
            assert_eq!(drain(&mut b, &out, from).await, to + 1);
            conn = b.into_conn();
            assert!(
                conn.is_some(),
                "a body read to its end keeps its connection"
            );
        }
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), file.bytes());
        assert_eq!(file.gets().len(), 2);
        assert_eq!(
            server.requests().len(),
            2,
            "both requests went over one connection"
        );
        true
    }

    /// The low-water mark ([`WAKE_AFTER`]), over plain HTTP and https, four answers on one connection: a fast one
    /// whose server stops for a while before its last 30 KB (the mark is up while the body comes fast, and must come
    /// down for those); a fast one read to its end (which can leave the mark up); a small one whose head comes late
    /// (it must wake the reader); a slow one (100 KB/s: the mark stays at one byte, or the stall timeout could wait on a
    /// batch).
    #[tokio::test]
    async fn the_wake_mark_is_up_only_while_a_fast_body_owes_a_batch() {
        trust_test_ca();
        let server = sdm_tests::TestServer::start().await;
        let paused = server.serve(
            "/paused",
            sdm_tests::FileSpec::new(4 << 20)
                .seed(6)
                .pause_before_last(30_000, Duration::from_millis(300)),
        );
        let fast = server.serve("/fast", sdm_tests::FileSpec::new(2 << 20).seed(7));
        let late = server.serve(
            "/late",
            sdm_tests::FileSpec::new(1000)
                .seed(8)
                .get_delay(Duration::from_millis(300)),
        );
        let slow = server.serve(
            "/slow",
            sdm_tests::FileSpec::new(100_000).seed(9).rate(100_000),
        );
        let front = TlsFront::start(&server, Cert::Good).await;
        for base in [server.url(""), front.url("")] {
            let dir = tempfile::tempdir().unwrap();
            let mut conn = None;
            for (file, path) in [
                (&paused, "/paused"),
                (&fast, "/fast"),
                (&late, "/late"),
                (&slow, "/slow"),
            ] {
                let url = Url::parse(&format!("{base}{path}")).unwrap();
                let out = File::create(dir.path().join(&path[1..])).unwrap();
                let read = async {
                    let Answer::Body(_, _, mut b) =
                        get(conn.take(), &url, &ranged(0, file.len() - 1))
                            .await
                            .unwrap()
                    else {
                        panic!("not a body");
                    };
                    let mut marks = Vec::new();
                    let mut at = 0;
                    loop {
                        // A batch at a time, so even a body that has all come already takes many reads.
                        let n = b.stage(WAKE_AFTER).await.unwrap();
                        marks.push(b.conn.waking.batched);
                        if n == 0 {
                            break;
                        }
                        b.commit(&out, at, n).unwrap();
                        at += n as u64;
                    }
                    (at, marks, b.into_conn())
                };
                // Each answer takes about a second at most; a reader waiting for bytes that never come waits for ever.
                let (end, marks, kept) = tokio::time::timeout(Duration::from_secs(20), read)
                    .await
                    .unwrap_or_else(|_| panic!("{url}: the body never ended"));
                assert_eq!(end, file.len(), "{url}");
                assert_eq!(
                    std::fs::read(dir.path().join(&path[1..])).unwrap(),
                    file.bytes()
                );
                match path {
                    "/paused" | "/fast" => assert!(marks.contains(&true), "{url}: {marks:?}"),
                    "/slow" => assert!(!marks.contains(&true), "{url}: {marks:?}"),
                    _ => {}
                }
                conn = Some(kept.expect("a body read to its end keeps its connection"));
            }
        }
    }

    /// A TLS body cut without `close_notify` (the TCP connection just ends) ends short: only authenticated bytes are
    /// written, the body reports its end (the transfer then sees an early end and retries), and the connection is
    /// not kept.
    #[tokio::test]
    async fn a_tls_body_cut_without_close_notify_ends_short_and_is_not_kept() {
        trust_test_ca();
        let server = sdm_tests::TestServer::start().await;
        let file = server.serve(
            "/f",
            sdm_tests::FileSpec::new(2 << 20)
                .seed(5)
                .cut_after(700_000, 1),
        );
        let front = sdm_tests::server::TlsFront::start_abrupt(&server).await;
        let url = Url::parse(&front.url("/f")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = File::create(dir.path().join("out")).unwrap();
        let Answer::Body(_, _, mut b) = get(None, &url, &ranged(0, (2 << 20) - 1)).await.unwrap()
        else {
            panic!("not a body");
        };
        let end = drain(&mut b, &out, 0).await;
        assert!(end < 2 << 20, "the cut body came whole");
        assert!(b.into_conn().is_none());
        let got = std::fs::read(dir.path().join("out")).unwrap();
        assert_eq!(got[..end as usize], file.bytes()[..end as usize]);
    }

    /// A bad certificate is refused on this path with the words reqwest's refusal gets.
    #[tokio::test]
    async fn a_bad_certificate_is_refused_here_as_by_reqwest() {
        use sdm_tests::server::{Cert, TlsFront};
        trust_test_ca();
        let server = sdm_tests::TestServer::start().await;
        server.serve("/f", sdm_tests::FileSpec::new(1000));
        let client = probe::client().unwrap();
        for cert in [Cert::SelfSigned, Cert::WrongHost, Cert::Expired] {
            let front = TlsFront::start(&server, cert).await;
            let url = Url::parse(&front.url("/f")).unwrap();
            let Err(own) = get(None, &url, &ranged(0, 9)).await else {
                panic!("{cert:?}: the own path took the certificate");
            };
            let own = super::super::error::certificate_problem(&own);
            let theirs = client.get(url.as_str()).send().await.unwrap_err();
            let super::super::error::TransferError::Certificate(theirs) =
                super::super::error::TransferError::from_reqwest(theirs)
            else {
                panic!("{cert:?}: reqwest's error is not about the certificate");
            };
            assert_eq!(own.as_deref(), Some(theirs.as_str()), "{cert:?}");
        }
        assert!(
            server.requests().is_empty(),
            "a request went past a bad certificate"
        );
    }

    #[test]
    fn only_http_and_https_are_eligible() {
        let ok = |u: &str| eligible(&Url::parse(u).unwrap());
        if ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
            .iter()
            .all(|v| std::env::var_os(v).is_none())
        {
            assert!(ok("http://example.com/f"));
        }
        if ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]
            .iter()
            .all(|v| std::env::var_os(v).is_none())
        {
            assert!(ok("https://example.com/f"));
        }
        assert!(!ok("ftp://example.com/f"));
    }
}
