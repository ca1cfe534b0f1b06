//! SDM's wire format, shared by the native host (`sdm`) and the WASM popup.
//!
//! # Layout
//! - This file: requests ([`Request`], [`Command`]), replies ([`Reply`]), pushed events ([`Event`]) and the data they
//!   carry ([`DownloadInfo`], [`Settings`], [`HistoryItem`]).
//! - [`codec`] (feature `codec`): the 4-byte native-endian length framing used on stdin/stdout and on the service socket.
//! - [`validate`]: the checks on URLs, numbers and headers that the engine, the command line and the popup share.
//!
//! **Invariant:** only this crate knows the JSON shape of a frame. The host and the popup build and read frames through
//! these types, so the two cannot drift apart.
//!
//! Every request is `{"id": <number>, "cmd": "...", ...}`. Every reply is `{"id": <same>, "ok": true, "result": {...}}`
//! or `{"id": <same>, "ok": false, "error": {"code": "...", "message": "..."}}`. Events carry no `id` and have an
//! `event` field instead. A request that names a download does so with `download_id`, since `id` is the request's own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(feature = "codec")]
pub mod codec;
pub mod validate;

/// Largest frame the host may send to a browser (Chrome and Firefox both refuse more).
pub const MAX_OUTGOING_FRAME: usize = 1024 * 1024;
/// Largest frame the host accepts; the length prefix of a larger one is refused before anything is allocated.
pub const MAX_INCOMING_FRAME: usize = 64 * 1024 * 1024;
/// The native messaging host's registered name.
pub const HOST_NAME: &str = "com.sdm.host";
/// The Chromium extension id, fixed by the `key` in `extension/manifest.json`.
pub const EXTENSION_ID: &str = "mamfelpfpaooapfmapiecgobfkfnmjnj";
/// The Firefox add-on id (`browser_specific_settings.gecko.id`).
pub const GECKO_ID: &str = "sdm@sdm.dev";
/// Largest page a `list` or `history` request returns, whatever `limit` asks for.
pub const MAX_PAGE: usize = 1000;
/// Connections per download: the accepted range and the default.
pub const THREADS_RANGE: std::ops::RangeInclusive<u32> = 1..=32;
pub const DEFAULT_THREADS: u32 = 8;
/// Retries per connection: the largest accepted value.
pub const MAX_RETRIES: u32 = 100;
/// `max_concurrent`: the accepted range.
pub const MAX_CONCURRENT_RANGE: std::ops::RangeInclusive<u32> = 1..=32;
/// Longest URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 16 * 1024;
/// `client_key`: the accepted length in bytes (of printable ASCII).
pub const CLIENT_KEY_LEN: std::ops::RangeInclusive<usize> = 1..=128;
/// Most items one `add_many` takes. With [`MAX_OUTCOME_MESSAGE`] it bounds the reply: 500 results of at most about
/// 1.6 KB each (a message of control characters escaped 6 bytes apiece) stay under [`MAX_OUTGOING_FRAME`].
pub const MAX_ADD_MANY: usize = 500;
/// Longest error message in an `add_many` result, in bytes; a longer one is cut (at a character boundary).
pub const MAX_OUTCOME_MESSAGE: usize = 256;

/// Numeric id of a download, unique within one service's data directory.
pub type DownloadId = u64;

/// One request frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the sender and echoed in the reply, so replies can be matched to requests.
    pub id: u64,
    #[serde(flatten)]
    pub command: Command,
}

/// What a request asks for; the `cmd` field selects the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Liveness check; answers with the host's version.
    Ping,
    Add(AddRequest),
    List(PageRequest),
    Pause {
        download_id: DownloadId,
    },
    Resume {
        download_id: DownloadId,
    },
    Cancel {
        download_id: DownloadId,
    },
    Remove {
        download_id: DownloadId,
        #[serde(default)]
        delete_file: bool,
    },
    /// Open a completed download's file, or (`folder: true`) the folder holding it, with the desktop's handler.
    Open {
        download_id: DownloadId,
        #[serde(default)]
        folder: bool,
    },
    History(PageRequest),
    ClearHistory,
    GetSettings,
    SetSettings {
        settings: SettingsPatch,
    },
    /// From now on, push [`Event`]s on this connection.
    Subscribe,
    /// The download added with this `client_key`, if it is in the queue. When a verified add with that key is still
    /// verifying, the answer waits for it, so it is final.
    Find {
        client_key: String,
    },
    /// The service's version, pid, data folder and download counts (`sdm status`).
    Status,
    /// Checkpoint every download and exit; the downloads go on at the next start. Answered before the service stops:
    /// the caller learns that it is gone when the connection closes.
    Stop,
    /// Change a download's speed cap (bytes per second, 0 = none) or connections; a running download changes at
    /// once (a new connection count restarts its transfer from the bytes it has).
    Update {
        download_id: DownloadId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bandwidth_limit: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        threads: Option<u32>,
    },
    /// A new address for a download (its link expired or failed). The bytes it has are kept when the new address
    /// serves the same file (same size, and the same ETag and Last-Modified where both sides give one); otherwise
    /// the answer is a `conflict` error, unless `restart`, which starts over from byte 0 at the new address.
    /// `headers` (and `referrer`, as in `add`), when given, replace the download's saved headers from now on, the
    /// probe of the new address included: a link the browser started again comes with its own cookies.
    SetUrl {
        download_id: DownloadId,
        url: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        restart: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        headers: Option<BTreeMap<String, String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        referrer: Option<String>,
    },
    /// Move a download in the queue's order, which is the order `list` returns and queued downloads start in: to the
    /// top or bottom, or up or down past the next download that may still go on (finished ones are passed over).
    Move {
        download_id: DownloadId,
        to: MoveTo,
    },
    /// Pause every queued and running download ([`CountResult`]).
    PauseAll,
    /// Queue every paused and failed download again ([`CountResult`]).
    ResumeAll,
    /// Take completed, failed and cancelled downloads off the list; history keeps them ([`CountResult`]).
    ClearFinished,
    /// Several adds in one request, answered by one write of the state ([`AddManyResult`]). Each item is judged on
    /// its own: one refused item does not refuse the others. At most [`MAX_ADD_MANY`] items; a verified add
    /// (`expect`) is refused in a batch, since each waits for its own server.
    AddMany {
        items: Vec<AddRequest>,
    },
}

/// `move.to`: where a download goes in the queue's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveTo {
    Top,
    Bottom,
    Up,
    Down,
}

/// The answer to `pause_all`, `resume_all` and `clear_finished`: how many downloads it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountResult {
    pub count: usize,
}

/// `add`: a new download.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    pub url: String,
    /// Wanted file name; sanitized, and never overwrites an existing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Bytes per second, 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<u64>,
    /// Extra request headers (cookies, user-agent...). Never logged, never written to history.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    /// Chosen by the client ([`CLIENT_KEY_LEN`] bytes of printable ASCII) to make the add idempotent: an add whose key
    /// is already in the queue answers that download (`existing: true`), and `find` looks it up after a lost reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// What the browser got: present, the add is verified (the server is asked first, and the add fails with
    /// `fetch_failed` when SDM would not get the same file), and it joins an unfinished download of the same URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
}

/// `add.expect`: what the browser's own download saw, for SDM to check against its first response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The file's size in bytes, when the browser knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The MIME type the browser got (`application/pdf`), when it knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
}

/// Paging for `list` and `history`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageRequest {
    #[serde(default)]
    pub offset: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Where a download is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Downloading,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    /// A finished download never runs again by itself.
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Downloading => "downloading",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// A download as the popup and `sdm ls` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadInfo {
    pub id: DownloadId,
    pub url: String,
    pub filename: String,
    /// Full path of the final file (the `.part` file sits beside it until completion).
    pub path: String,
    pub status: Status,
    /// Size in bytes, when the server told it.
    pub total: Option<u64>,
    pub downloaded: u64,
    /// Bytes per second, smoothed over a few seconds.
    pub speed: u64,
    /// Seconds left at the current speed, when it can be known.
    pub eta: Option<u64>,
    /// Connections asked for.
    pub threads: u32,
    /// Connections open now.
    pub connections: u32,
    pub retries: u32,
    pub bandwidth_limit: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix time in milliseconds.
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
}

impl DownloadInfo {
    /// Percent done, 0 to 100, when the size is known.
    pub fn percent(&self) -> Option<f64> {
        self.total.map(|t| {
            if t == 0 {
                100.0
            } else {
                (self.downloaded as f64 * 100.0 / t as f64).min(100.0)
            }
        })
    }
}

/// The live part of a download, pushed in `progress` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub id: DownloadId,
    pub status: Status,
    pub total: Option<u64>,
    pub downloaded: u64,
    pub speed: u64,
    pub eta: Option<u64>,
    pub connections: u32,
}

/// A finished download, as kept in history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryItem {
    pub id: DownloadId,
    pub url: String,
    pub filename: String,
    pub path: String,
    pub status: Status,
    pub total: Option<u64>,
    pub downloaded: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: u64,
    pub finished_at: u64,
}

/// The service's settings. Every field has a default, so an older settings file still loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Downloads running at once; the rest wait in order.
    pub max_concurrent: u32,
    /// Global speed cap in bytes per second, 0 = unlimited.
    pub bandwidth_limit: u64,
    /// Where files go. Empty means the user's Downloads folder.
    pub download_dir: String,
    /// Connections for a new download that does not say.
    pub default_threads: u32,
    /// Retries per connection for a new download that does not say.
    pub default_retries: u32,
    /// A connection that delivers no byte for this long is dropped and retried.
    pub stall_timeout_secs: u64,
    /// Take over the browser's own downloads.
    pub capture_enabled: bool,
    /// Capture only downloads at least this large (unknown sizes are always captured).
    pub capture_min_size: u64,
    /// Hosts whose downloads stay with the browser (a host matches itself and its subdomains).
    pub capture_exclude: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_concurrent: 3,
            bandwidth_limit: 0,
            download_dir: String::new(),
            default_threads: DEFAULT_THREADS,
            default_retries: 5,
            stall_timeout_secs: 20,
            capture_enabled: true,
            capture_min_size: 1024 * 1024,
            capture_exclude: Vec::new(),
        }
    }
}

/// `set_settings`: the fields to change; absent ones stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_threads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_min_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_exclude: Option<Vec<String>>,
}

/// Results of successful requests, one type per command that returns data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingResult {
    pub version: String,
}

/// `status`: who answers, and what its queue holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResult {
    /// The service's version (`sdm --version`), which a newer client compares with its own.
    pub version: String,
    pub pid: u32,
    /// The data folder the service owns (state, socket, logs).
    pub data_dir: String,
    pub counts: StatusCounts,
}

/// How many downloads the queue holds, by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusCounts {
    pub queued: usize,
    pub downloading: usize,
    pub paused: usize,
    pub completed: usize,
    pub failed: usize,
    pub cancelled: usize,
}

impl StatusCounts {
    /// Count one more download in `status`.
    pub fn add(&mut self, status: Status) {
        let slot = match status {
            Status::Queued => &mut self.queued,
            Status::Downloading => &mut self.downloading,
            Status::Paused => &mut self.paused,
            Status::Completed => &mut self.completed,
            Status::Failed => &mut self.failed,
            Status::Cancelled => &mut self.cancelled,
        };
        *slot += 1;
    }

    pub fn total(&self) -> usize {
        self.queued + self.downloading + self.paused + self.completed + self.failed + self.cancelled
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddResult {
    pub id: DownloadId,
    /// The add named a download already in the queue (same `client_key`, or a verified add of a URL being
    /// downloaded): nothing new was added. Omitted when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
}

/// `add_many`: one outcome per item, in the items' order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddManyResult {
    pub results: Vec<AddOutcome>,
}

/// What became of one item of an `add_many`: `{"id": 7}` (with `existing` as for `add`) or
/// `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AddOutcome {
    Added(AddResult),
    Failed { error: ErrorBody },
}

impl AddOutcome {
    /// A refused item, its message cut to [`MAX_OUTCOME_MESSAGE`] bytes so that a full batch's reply fits a frame.
    pub fn failed(code: ErrorCode, message: impl Into<String>) -> AddOutcome {
        let mut message = message.into();
        if message.len() > MAX_OUTCOME_MESSAGE {
            let mut end = MAX_OUTCOME_MESSAGE - '…'.len_utf8();
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        AddOutcome::Failed {
            error: ErrorBody { code, message },
        }
    }
}

/// `find`: the download with that `client_key`, or `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindResult {
    pub download: Option<DownloadInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListResult {
    pub downloads: Vec<DownloadInfo>,
    /// How many downloads there are in all (the page may hold fewer).
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryResult {
    /// Newest first.
    pub items: Vec<HistoryItem>,
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsResult {
    pub settings: Settings,
}

/// Why a request failed, in a form a program can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a request this host knows.
    BadRequest,
    /// A field is out of range or malformed.
    InvalidArgument,
    NotFound,
    /// The command does not apply to the download as it is (resume a completed one, say).
    InvalidState,
    /// A frame was larger than allowed.
    TooLarge,
    /// The engine service could not be reached or started.
    Unavailable,
    /// A verified add could not fetch the file the browser got (an error status, another size, a web page instead
    /// of the file): nothing was added, and the browser keeps its copy.
    FetchFailed,
    /// `set_url`: the new address serves another file than the one partly downloaded; nothing changed.
    Conflict,
    Io,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// One reply frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's id, or `null` when the frame could not be read as a request.
    pub id: Option<u64>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Reply {
    pub fn ok(id: u64, result: impl Serialize) -> Reply {
        let result = serde_json::to_value(result).unwrap_or_else(|_| serde_json::json!({}));
        Reply {
            id: Some(id),
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn err(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply {
            id,
            ok: false,
            result: None,
            error: Some(ErrorBody {
                code,
                message: message.into(),
            }),
        }
    }

    /// The typed result of a successful reply, or its error.
    pub fn into_result<T: serde::de::DeserializeOwned>(self) -> Result<T, ErrorBody> {
        match (self.ok, self.result, self.error) {
            (true, Some(v), _) => serde_json::from_value(v).map_err(|e| ErrorBody {
                code: ErrorCode::BadRequest,
                message: format!("unexpected result: {e}"),
            }),
            (true, None, _) => {
                serde_json::from_value(serde_json::json!({})).map_err(|e| ErrorBody {
                    code: ErrorCode::BadRequest,
                    message: format!("unexpected result: {e}"),
                })
            }
            (false, _, Some(e)) => Err(e),
            (false, _, None) => Err(ErrorBody {
                code: ErrorCode::Internal,
                message: "error reply without error".into(),
            }),
        }
    }
}

/// An event pushed to subscribers, at most 5 progress events a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The live numbers of every running download.
    Progress { downloads: Vec<Progress> },
    /// A download was added or changed status (or its name or size became known).
    State { download: DownloadInfo },
    /// A download was removed from the list.
    Removed { id: DownloadId },
    /// Settings changed.
    Settings { settings: Settings },
    /// History changed (an item was added, or it was cleared).
    History { total: usize },
}

/// Anything the host sends: a reply or an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Incoming {
    Event(Event),
    Reply(Reply),
}

/// Read a request frame. On failure, the error reply to send (with the request's id when it could be read).
pub fn parse_request(frame: &[u8]) -> Result<Request, Reply> {
    let value: serde_json::Value = serde_json::from_slice(frame).map_err(|e| {
        Reply::err(
            None,
            ErrorCode::BadRequest,
            format!("frame is not valid JSON: {e}"),
        )
    })?;
    let id = match value.get("id") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    let Some(id) = id else {
        return Err(Reply::err(
            None,
            ErrorCode::BadRequest,
            "request needs a numeric \"id\" (a whole number ≥ 0)",
        ));
    };
    serde_json::from_value::<Request>(value).map_err(|e| {
        Reply::err(
            Some(id),
            ErrorCode::BadRequest,
            format!("invalid request: {e}"),
        )
    })
}

/// Encode a frame body as JSON, refusing anything over `limit` bytes.
pub fn to_frame<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(value).map_err(FrameError::Encode)?;
    if body.len() > limit {
        return Err(FrameError::TooLarge {
            len: body.len(),
            limit,
        });
    }
    Ok(body)
}

/// Why a value could not become a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The JSON would exceed the allowed size: send less (a smaller page, a shorter error).
    #[error("frame of {len} bytes is over the {limit} byte limit")]
    TooLarge { len: usize, limit: usize },
    /// The value has no JSON form (a map with non-string keys, a failing `Serialize`): a bug in the sender.
    #[error("cannot encode the frame as JSON: {0}")]
    Encode(serde_json::Error),
}

#[cfg(test)]
mod tests;
