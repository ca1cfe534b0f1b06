//! How a served file behaves: [`FileSpec`], the builder a test names its faults with.

use std::time::Duration;

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
pub(super) struct Counted<T> {
    value: T,
    times: u32,
}

impl<T: Copy> Counted<T> {
    pub(super) fn at(this: Option<Counted<T>>, n: u32) -> Option<T> {
        this.filter(|c| n < c.times).map(|c| c.value)
    }
}

/// How one served file behaves: a builder, consumed by [`TestServer::serve`](super::TestServer::serve).
///
/// Counts: "requests" counts every request to the path (HEAD included), "responses" counts only the `GET` responses
/// that carry file bytes (200 or 206). Both start at 0 for each file.
#[derive(Debug, Clone)]
pub struct FileSpec {
    pub(super) len: u64,
    pub(super) seed: u64,
    pub(super) ranges: bool,
    pub(super) head: bool,
    /// How long GET waits for its answer.
    pub(super) get_delay: Duration,
    pub(super) accept_ranges_header: bool,
    pub(super) no_length: Option<NoLength>,
    pub(super) rate: u64,
    pub(super) slow_range: Option<(u64, u64)>,
    /// Every body's last `.0` bytes are held back for `.1`.
    pub(super) pause_before_last: Option<(u64, Duration)>,
    /// Requests `[from, to)` get this status.
    pub(super) status_window: Option<(u32, u32, u16)>,
    /// Requests `[from, to)` get no answer at all.
    pub(super) hang_window: Option<(u32, u32)>,
    /// The longest range one response carries.
    pub(super) max_range: Option<u64>,
    pub(super) status_always: Option<u16>,
    pub(super) retry_after: Option<String>,
    pub(super) cut_after: Option<Counted<u64>>,
    pub(super) stall_after: Option<Counted<u64>>,
    pub(super) etag: bool,
    pub(super) last_modified: bool,
    pub(super) content_changes_after: Option<u32>,
    pub(super) content_type: String,
    pub(super) headers: Vec<(String, Vec<u8>)>,
    /// Sent on GET responses that carry the file, never on HEAD.
    pub(super) get_headers: Vec<(String, Vec<u8>)>,
    pub(super) wrong_content_range: Option<Counted<()>>,
    pub(super) extra_bytes: Option<Counted<u64>>,
    pub(super) short_body: Option<Counted<u64>>,
    pub(super) html_on_range: Option<Counted<()>>,
    /// Where a GET with `Range` is sent (302) instead of being answered.
    pub(super) range_redirect: Option<String>,
    pub(super) length_lie: Option<Counted<i64>>,
    pub(super) required_headers: Vec<(String, String)>,
}

impl FileSpec {
    /// A well-behaved file of `len` bytes: ranges, HEAD and `Accept-Ranges: bytes`, a `Content-Length`, no validators.
    pub fn new(len: u64) -> FileSpec {
        FileSpec {
            len,
            seed: len ^ 0x5D_5EED,
            ranges: true,
            head: true,
            get_delay: Duration::ZERO,
            accept_ranges_header: true,
            no_length: None,
            rate: 0,
            slow_range: None,
            pause_before_last: None,
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

    /// Send each body at full speed up to its last `bytes`, and those only after `pause`: a server that stops short
    /// of an answer's end for a while.
    pub fn pause_before_last(mut self, bytes: u64, pause: Duration) -> Self {
        self.pause_before_last = Some((bytes, pause));
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
