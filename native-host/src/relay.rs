//! What a browser starts: native messaging on stdin/stdout, forwarded frame by frame to the service's socket.
//!
//! The relay holds no download state; it only routes. It reads each request far enough to know its id, so that:
//! - a frame that is not a request is answered here (`bad_request`, with the id when it could be read);
//! - a request that cannot reach the service gets `unavailable` with its id, as do requests in flight when the
//!   service goes away;
//! - after the service restarts, a browser that had subscribed is subscribed again on the new connection.
//!
//! Its connection comes from [`client::connect_or_start`], so a relay newer than the running service replaces it (the
//! version handshake) before the first frame is forwarded.
//!
//! **Invariant:** nothing but frames of at most [`MAX_OUTGOING_FRAME`] bytes is written to stdout. A larger reply is
//! replaced by a `too_large` error carrying its id; a larger event is dropped.
//!
//! Reading and writing run apart (stdin and stdout on threads of their own, the socket's writer as a task, fed by
//! unbounded queues), so a peer that is slow to read can never stop the relay from reading the other side.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use protocol::{Command, ErrorCode, MAX_INCOMING_FRAME, MAX_OUTGOING_FRAME, Reply, Request};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, FramedRead, FramedWrite};

use crate::{client, ipc};

/// After failing to reach the service, answer `unavailable` at once for this long before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Ids the relay uses for its own requests (re-subscribing), counted down from the top to stay clear of the
/// browser's small ones. Their replies are not passed on.
const FIRST_INTERNAL_ID: u64 = u64::MAX;

/// How the relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// stdin closed: the browser let go of the port.
    StdinClosed,
    /// stdin sent a length prefix over the limit; the error was answered and the stream cannot be resynchronised.
    Oversize,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot read stdin: {0}")]
    Stdin(io::Error),
    #[error("cannot write stdout: {0}")]
    Stdout(io::Error),
}

/// Relay between the browser (stdin/stdout) and the service of `data_dir` until stdin closes.
pub async fn run(data_dir: PathBuf) -> Result<Exit, RelayError> {
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = spawn_stdout_writer(out_rx);
    let mut relay = Relay {
        data_dir,
        out: out_tx,
        conn: None,
        failure: None,
        pending: HashMap::new(),
        internal: HashSet::new(),
        next_internal: FIRST_INTERNAL_ID,
        subscribed: false,
    };
    // Connect at once, so the service is running by the time the first request comes.
    relay.connect().await;

    let mut stdin = spawn_stdin_reader();
    let exit = loop {
        if relay.out.is_closed() {
            // The stdout writer stopped (the browser closed its end): nobody hears us any more.
            break Err(RelayError::Stdout(io::ErrorKind::BrokenPipe.into()));
        }
        tokio::select! {
            frame = stdin.recv() => match frame {
                None => break Ok(Exit::StdinClosed),
                Some(Ok(frame)) => relay.on_browser_frame(frame).await,
                Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::warn!(cause = %e, "oversize frame on stdin");
                    let reply = Reply::err(
                        None,
                        ErrorCode::TooLarge,
                        format!("{e}: requests are limited to {MAX_INCOMING_FRAME} bytes"),
                    );
                    relay.to_browser_reply(&reply);
                    break Ok(Exit::Oversize);
                }
                Some(Err(e)) => break Err(RelayError::Stdin(e)),
            },
            frame = next_service_frame(&mut relay.conn) => match frame {
                Some(frame) => relay.on_service_frame(frame),
                None => relay.service_lost().await,
            },
        }
    };
    // Let the writer drain what is queued, then stop.
    drop(relay);
    // The writer's own error, when it has one, says more than ours.
    if let Ok(Ok(Err(e))) = tokio::task::spawn_blocking(move || writer.join()).await {
        return Err(RelayError::Stdout(e));
    }
    exit
}

/// Read frames from stdin on a thread of its own (stdin may be a pipe, a file or a terminal; blocking reads work on
/// all of them). The channel ends after the last whole frame, or with the error that stopped the reading.
fn spawn_stdin_reader() -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut codec = protocol::codec::codec(MAX_INCOMING_FRAME);
        let mut buf = BytesMut::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut stdin = std::io::stdin().lock();
        loop {
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        if tx.blocking_send(Ok(frame.freeze())).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            match stdin.read(&mut chunk) {
                Ok(0) => {
                    if !buf.is_empty() {
                        tracing::warn!(bytes = buf.len(), "stdin closed in the middle of a frame");
                    }
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}

/// Write queued frame bodies to stdout with their length prefixes, on a thread of its own, flushing after each burst.
/// This is the only writer of stdout in relay mode.
fn spawn_stdout_writer(
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) -> std::thread::JoinHandle<io::Result<()>> {
    std::thread::spawn(move || {
        let mut stdout = std::io::stdout().lock();
        while let Some(frame) = rx.blocking_recv() {
            write_frame(&mut stdout, &frame)?;
            while let Ok(frame) = rx.try_recv() {
                write_frame(&mut stdout, &frame)?;
            }
            stdout.flush()?;
        }
        stdout.flush()
    })
}

fn write_frame(out: &mut impl Write, body: &[u8]) -> io::Result<()> {
    if body.len() > MAX_OUTGOING_FRAME {
        // Callers replace oversize replies; this is the last guard of the invariant.
        tracing::error!(len = body.len(), "refusing to write an oversize frame");
        return Ok(());
    }
    out.write_all(&(body.len() as u32).to_ne_bytes())?;
    out.write_all(body)
}

/// The next frame from the service, `None` when the connection ends; pending forever while there is none.
async fn next_service_frame(conn: &mut Option<Conn>) -> Option<Bytes> {
    match conn {
        Some(conn) => match conn.read.next().await {
            Some(Ok(frame)) => Some(frame.freeze()),
            Some(Err(e)) => {
                tracing::warn!(cause = %e, "bad frame from the service");
                None
            }
            None => None,
        },
        None => std::future::pending().await,
    }
}

/// A live connection to the service.
struct Conn {
    read: FramedRead<ipc::ReadHalf, tokio_util::codec::LengthDelimitedCodec>,
    write: mpsc::UnboundedSender<Bytes>,
}

impl Conn {
    fn new(stream: ipc::Stream) -> Conn {
        let (read, write) = ipc::split(stream);
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(async move {
            let mut sink = FramedWrite::new(write, protocol::codec::codec(MAX_INCOMING_FRAME));
            while let Some(frame) = rx.recv().await {
                if let Err(e) = sink.send(frame).await {
                    tracing::warn!(cause = %e, "cannot write to the service");
                    return;
                }
            }
        });
        Conn {
            read: FramedRead::new(read, protocol::codec::codec(MAX_INCOMING_FRAME)),
            write: tx,
        }
    }
}

struct Relay {
    data_dir: PathBuf,
    out: mpsc::UnboundedSender<Vec<u8>>,
    conn: Option<Conn>,
    /// When and why the last attempt to reach the service failed, for the `unavailable` replies until the next one.
    failure: Option<(Instant, String)>,
    /// Browser requests sent to the service and not answered yet (an id may be reused, hence the count).
    pending: HashMap<u64, usize>,
    /// Ids of the relay's own requests, whose replies stay here.
    internal: HashSet<u64>,
    next_internal: u64,
    /// The browser asked for events: ask again on a new connection.
    subscribed: bool,
}

impl Relay {
    /// Try to reach (or start) the service. On success, re-subscribe if the browser had.
    async fn connect(&mut self) -> bool {
        match client::connect_or_start(&self.data_dir).await {
            Ok(stream) => {
                tracing::info!("connected to the service");
                self.conn = Some(Conn::new(stream));
                self.failure = None;
                if self.subscribed {
                    let id = self.next_internal;
                    self.next_internal -= 1;
                    self.internal.insert(id);
                    let request = Request {
                        id,
                        command: Command::Subscribe,
                    };
                    let body = serde_json::to_vec(&request).expect("a request always serializes");
                    self.send_to_service(Bytes::from(body));
                }
                true
            }
            Err(e) => {
                tracing::warn!(cause = %e, "service unavailable");
                self.failure = Some((Instant::now(), e.to_string()));
                false
            }
        }
    }

    async fn on_browser_frame(&mut self, frame: Bytes) {
        let request = match protocol::parse_request(&frame) {
            Ok(request) => request,
            Err(reply) => return self.to_browser_reply(&reply),
        };
        if self.conn.is_none() {
            let may_retry = self
                .failure
                .as_ref()
                .is_none_or(|(t, _)| t.elapsed() >= RETRY_AFTER);
            if !may_retry || !self.connect().await {
                return self.to_browser_reply(&self.unavailable(request.id));
            }
        }
        if matches!(request.command, Command::Subscribe) {
            self.subscribed = true;
        }
        *self.pending.entry(request.id).or_default() += 1;
        self.send_to_service(frame);
    }

    fn send_to_service(&mut self, frame: Bytes) {
        if let Some(conn) = &self.conn {
            // A closed writer shows up as the end of the read side too; the pending request is answered then.
            let _ = conn.write.send(frame);
        }
    }

    fn on_service_frame(&mut self, frame: Bytes) {
        let id = reply_id(&frame);
        if let Some(id) = id {
            if self.internal.remove(&id) {
                return;
            }
            if let Some(count) = self.pending.get_mut(&id) {
                *count -= 1;
                if *count == 0 {
                    self.pending.remove(&id);
                }
            }
        }
        if frame.len() <= MAX_OUTGOING_FRAME {
            let _ = self.out.send(frame.to_vec());
        } else if let Some(id) = id {
            tracing::warn!(id, len = frame.len(), "reply too large for the browser");
            let reply = Reply::err(
                Some(id),
                ErrorCode::TooLarge,
                format!(
                    "reply of {} bytes is over the browser's {MAX_OUTGOING_FRAME} byte limit: ask for less",
                    frame.len()
                ),
            );
            self.to_browser_reply(&reply);
        } else {
            tracing::warn!(
                len = frame.len(),
                "dropping an event too large for the browser"
            );
        }
    }

    /// The service went away: fail what it had not answered, and come back at once if events are expected.
    async fn service_lost(&mut self) {
        tracing::warn!(pending = self.pending.len(), "lost the service");
        self.conn = None;
        self.internal.clear();
        let pending = std::mem::take(&mut self.pending);
        for (id, count) in pending {
            for _ in 0..count {
                let reply = Reply::err(
                    Some(id),
                    ErrorCode::Unavailable,
                    "the sdm service stopped before answering: send the request again",
                );
                self.to_browser_reply(&reply);
            }
        }
        if self.subscribed {
            self.connect().await;
        }
    }

    fn unavailable(&self, id: u64) -> Reply {
        let cause = self
            .failure
            .as_ref()
            .map_or("not connected", |(_, cause)| cause.as_str());
        Reply::err(
            Some(id),
            ErrorCode::Unavailable,
            format!("the sdm service could not be reached: {cause}"),
        )
    }

    fn to_browser_reply(&self, reply: &Reply) {
        let frame = crate::service::encode_reply(reply);
        let _ = self.out.send(frame);
    }
}

/// The `id` of a reply frame, read without decoding the rest; `None` for events and unreadable frames.
fn reply_id(frame: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<u64>,
        event: Option<serde::de::IgnoredAny>,
    }
    let head = serde_json::from_slice::<IdOnly>(frame).ok()?;
    if head.event.is_some() { None } else { head.id }
}

/// Which browser started us, from argv (Chrome: the caller's origin; Firefox: manifest path then add-on id).
pub fn caller(args: &[String]) -> String {
    match args {
        [origin, ..] if origin.starts_with("chrome-extension://") => format!("chromium {origin}"),
        [_, addon, ..] => format!("firefox {addon}"),
        _ => "unknown".to_string(),
    }
}

/// True when argv looks like a browser starting a native messaging host.
pub fn is_browser_launch(args: &[String]) -> bool {
    match args {
        [first, ..] if first.starts_with("chrome-extension://") => true,
        [manifest, addon, ..] => manifest.ends_with(".json") && !addon.starts_with('-'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn browser_launches_are_recognised() {
        assert!(is_browser_launch(&args(&["chrome-extension://abc/"])));
        assert!(is_browser_launch(&args(&[
            "chrome-extension://abc/",
            "--parent-window=0"
        ])));
        assert!(is_browser_launch(&args(&[
            "/home/u/.mozilla/native-messaging-hosts/com.sdm.host.json",
            "sdm@sdm.dev"
        ])));
        assert!(!is_browser_launch(&args(&["get", "http://x/a.json"])));
        assert!(!is_browser_launch(&args(&["ls"])));
        assert!(!is_browser_launch(&args(&[])));
    }

    fn relay_with_output() -> (Relay, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (out, rx) = mpsc::unbounded_channel();
        let relay = Relay {
            data_dir: PathBuf::from("/nonexistent"),
            out,
            conn: None,
            failure: None,
            pending: HashMap::from([(5, 1)]),
            internal: HashSet::from([u64::MAX]),
            next_internal: u64::MAX - 1,
            subscribed: false,
        };
        (relay, rx)
    }

    #[test]
    fn an_oversize_reply_becomes_a_too_large_error_and_an_oversize_event_is_dropped() {
        let (mut relay, mut rx) = relay_with_output();
        let big = "x".repeat(MAX_OUTGOING_FRAME);
        let reply = serde_json::to_vec(&Reply::ok(5, serde_json::json!({ "blob": big }))).unwrap();
        relay.on_service_frame(Bytes::from(reply));
        let sent: Reply = serde_json::from_slice(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(sent.id, Some(5));
        assert_eq!(sent.error.unwrap().code, ErrorCode::TooLarge);
        assert!(relay.pending.is_empty());

        let event = serde_json::json!({"event": "history", "total": 1, "pad": big}).to_string();
        relay.on_service_frame(Bytes::from(event));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn replies_to_the_relays_own_requests_stay_in_the_relay() {
        let (mut relay, mut rx) = relay_with_output();
        relay.on_service_frame(Bytes::from(format!(
            r#"{{"id":{},"ok":true,"result":{{}}}}"#,
            u64::MAX
        )));
        assert!(rx.try_recv().is_err());
        relay.on_service_frame(Bytes::from_static(br#"{"id":5,"ok":true,"result":{}}"#));
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn reply_ids_are_read_from_replies_only() {
        assert_eq!(reply_id(br#"{"id":7,"ok":true,"result":{}}"#), Some(7));
        assert_eq!(reply_id(br#"{"id":null,"ok":false}"#), None);
        assert_eq!(reply_id(br#"{"event":"removed","id":3}"#), None);
        assert_eq!(reply_id(b"nope"), None);
    }
}
