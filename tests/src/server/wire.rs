//! One connection of the test server: read each request's head, answer it as its route and its file's spec say
//! (faults included), and log it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::spec::{Counted, FileSpec, NoLength};
use super::{ByteRange, FileState, Request, Route, Shared, fill, last_modified, lock, parse_range};

/// Largest request head the server reads before giving up on a connection.
const MAX_HEAD: usize = 64 * 1024;
/// Body bytes per write when no rate cap is set.
const CHUNK: usize = 64 * 1024;

/// What a response left the connection fit for.
enum After {
    KeepAlive,
    Close,
}

pub(super) async fn connection(
    stream: TcpStream,
    conn: u64,
    accepted: Instant,
    shared: Arc<Shared>,
) {
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
        super::header(&self.headers, name)
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

    /// Send `refusal` as a complete small response.
    async fn refuse(&mut self, refusal: Refusal) -> After {
        self.simple(refusal.status, refusal.headers, refusal.body)
            .await
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

/// Answer a request for a served file as its spec says: refusals and faults first, then the head and the body.
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
    if let Some(refusal) = refuse_early(spec, head, req_no) {
        return out.refuse(refusal).await;
    }
    let is_head = head.method == "HEAD";
    if !is_head && !spec.get_delay.is_zero() {
        tokio::time::sleep(spec.get_delay).await;
    }
    if let Some(refusal) = refuse_method(spec, head, is_head) {
        return out.refuse(refusal).await;
    }

    let version = file.version_for(req_no);
    let validators = Validators {
        etag: file.etag(version),
        modified: last_modified(version),
    };
    let bounds = match resolve_range(spec, head, &validators) {
        Ok(bounds) => bounds,
        Err(refusal) => return out.refuse(refusal).await,
    };

    // HEAD gets number `u32::MAX`, which no fault count reaches: faults are about bodies.
    let resp_no = if is_head {
        u32::MAX
    } else {
        file.responses.fetch_add(1, Ordering::SeqCst)
    };
    if bounds.is_some() && Counted::at(spec.html_on_range, resp_no).is_some() {
        return out.refuse(Refusal::error_page()).await;
    }

    let reply = reply_head(spec, bounds, resp_no, is_head, validators);
    if out.head(reply.status, &reply.headers).await.is_err() {
        return After::Close;
    }
    if is_head {
        return if reply.close_after {
            After::Close
        } else {
            After::KeepAlive
        };
    }
    let plan = body_plan(spec, &reply, bounds.is_some(), resp_no);

    let _guard = Active::enter(shared, file, &head.target);
    if send_body(out, file, version, &plan).await.is_err() {
        return After::Close;
    }
    match plan.then {
        End::Done => {
            if plan.chunked && out.wr.write_all(b"0\r\n\r\n").await.is_err() {
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

/// An answer other than the file: a status, its headers and a short body.
struct Refusal {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: &'static str,
}

impl Refusal {
    fn new(status: u16, headers: Vec<(String, Vec<u8>)>, body: &'static str) -> Refusal {
        Refusal {
            status,
            headers,
            body,
        }
    }

    /// A web page where the file should be, with a 200, as some servers send when they fail.
    fn error_page() -> Refusal {
        let page =
            "<!DOCTYPE html><html><body><h1>Oops</h1><p>Something went wrong.</p></body></html>\n";
        Refusal::new(200, vec![h("Content-Type", "text/html")], page)
    }
}

/// What request `req_no` gets before the spec's delay, if not the file: a login page when a required header is
/// missing, or the spec's error status.
fn refuse_early(spec: &FileSpec, head: &Head, req_no: u32) -> Option<Refusal> {
    for (name, want) in &spec.required_headers {
        if !head.header(name).is_some_and(|v| v.contains(want.as_str())) {
            let headers = vec![h("Content-Type", "text/html")];
            return Some(Refusal::new(403, headers, "<html>log in first</html>\n"));
        }
    }
    if let Some(status) = spec.status_always {
        return Some(Refusal::new(status, vec![], "go away\n"));
    }
    if let Some((from, to, status)) = spec.status_window
        && (from..to).contains(&req_no)
    {
        let mut headers = vec![];
        if let Some(ra) = &spec.retry_after {
            headers.push(h("Retry-After", ra.clone()));
        }
        return Some(Refusal::new(status, headers, "try later\n"));
    }
    None
}

/// A method the file does not answer (405), or a ranged GET sent elsewhere (302).
fn refuse_method(spec: &FileSpec, head: &Head, is_head: bool) -> Option<Refusal> {
    if is_head && !spec.head || !is_head && head.method != "GET" {
        return Some(Refusal::new(
            405,
            vec![h("Allow", "GET")],
            "method not allowed\n",
        ));
    }
    if let Some(location) = &spec.range_redirect
        && !is_head
        && head.header("range").is_some()
    {
        return Some(Refusal::new(
            302,
            vec![h("Location", location.clone())],
            "moved\n",
        ));
    }
    None
}

/// The validators of the version a request sees.
struct Validators {
    etag: String,
    modified: String,
}

impl Validators {
    /// `value` names this version by a validator the spec sends.
    fn match_any(&self, spec: &FileSpec, value: &str) -> bool {
        (spec.etag && value == self.etag) || (spec.last_modified && value == self.modified)
    }
}

/// The bytes a request gets: all of the file (`None`), or the inclusive range it asked for; or a refusal (412 for a
/// failed `If-Match`, 416 for a range past the end).
fn resolve_range(
    spec: &FileSpec,
    head: &Head,
    validators: &Validators,
) -> Result<Option<(u64, u64)>, Refusal> {
    if let Some(want) = head.header("if-match")
        && want != "*"
        && !(spec.etag && want.split(',').any(|t| t.trim() == validators.etag))
    {
        return Err(Refusal::new(412, vec![], "precondition failed\n"));
    }

    let total = spec.len;
    let mut range = if spec.ranges {
        head.header("range").and_then(parse_range)
    } else {
        None
    };
    if let Some(v) = head.header("if-range")
        && !validators.match_any(spec, v)
    {
        range = None;
    }
    let unsatisfiable = || {
        let headers = vec![h("Content-Range", format!("bytes */{total}"))];
        Refusal::new(416, headers, "")
    };
    match range {
        None => Ok(None),
        Some(ByteRange::From(a, _)) if a >= total => Err(unsatisfiable()),
        Some(ByteRange::From(a, b)) => Ok(Some((a, b.unwrap_or(u64::MAX).min(total - 1)))),
        Some(ByteRange::Suffix(n)) if n == 0 || total == 0 => Err(unsatisfiable()),
        Some(ByteRange::Suffix(n)) => Ok(Some((total - n.min(total), total - 1))),
    }
}

/// The head of a file response and what it stands for: the bytes `[start, end)` that really follow (the headers may
/// say otherwise, as the spec's faults ask), and whether the connection closes after the body.
struct Reply {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    start: u64,
    end: u64,
    close_after: bool,
}

/// The head for response `resp_no` of `bounds` (`None`: the whole file), with the spec's headers and lies.
fn reply_head(
    spec: &FileSpec,
    bounds: Option<(u64, u64)>,
    resp_no: u32,
    is_head: bool,
    validators: Validators,
) -> Reply {
    let total = spec.len;
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
        headers.push(h("ETag", validators.etag));
    }
    if spec.last_modified {
        headers.push(h("Last-Modified", validators.modified));
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
    Reply {
        status,
        headers,
        start,
        end,
        close_after,
    }
}

/// What of a file response's body goes out, and how.
struct BodyPlan {
    /// The offset in the file of the first byte.
    start: u64,
    len: u64,
    /// Bytes a second; 0 for no cap.
    rate: u64,
    chunked: bool,
    then: End,
}

/// The body `reply` stands for, less what the spec's faults hold back from response `resp_no` (`ranged`: it
/// answers a range).
fn body_plan(spec: &FileSpec, reply: &Reply, ranged: bool, resp_no: u32) -> BodyPlan {
    let full = reply.end - reply.start;
    let mut len = full;
    let mut then = if reply.close_after {
        End::Close
    } else {
        End::Done
    };
    if let Some(missing) = Counted::at(spec.short_body, resp_no) {
        len = full.saturating_sub(missing);
        then = End::Close;
    }
    if let Some(k) = Counted::at(spec.cut_after, resp_no)
        && k < len
    {
        len = k;
        then = End::Close;
    }
    if let Some(k) = Counted::at(spec.stall_after, resp_no)
        && k < len
    {
        len = k;
        then = End::Stall;
    }
    let rate = match spec.slow_range {
        Some((from, slow)) if ranged && reply.start >= from => slow,
        _ => spec.rate,
    };
    BodyPlan {
        start: reply.start,
        len,
        rate,
        chunked: spec.no_length == Some(NoLength::Chunked),
        then,
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

/// Send `plan`'s bytes of version `version` of `file`.
async fn send_body(
    out: &mut Out<'_>,
    file: &FileState,
    version: u32,
    plan: &BodyPlan,
) -> std::io::Result<()> {
    let BodyPlan {
        start,
        len,
        rate,
        chunked,
        ..
    } = *plan;
    let seed = file.spec.seed;
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
    // Where the body stops for a while, and for how long.
    let pause = file
        .spec
        .pause_before_last
        .map(|(last, pause)| (len.saturating_sub(last), pause));
    while sent < len {
        let mut n = chunk.min((len - sent) as usize);
        if let Some((at, pause)) = pause {
            if sent == at && at > 0 {
                out.wr.flush().await?;
                tokio::time::sleep(pause).await;
            } else if sent < at {
                n = n.min((at - sent) as usize);
            }
        }
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
