//! `sdm serve`: the one process per data directory that owns the [`Engine`] and answers protocol frames on a Unix
//! socket (a named pipe on Windows: [`crate::ipc`]).
//!
//! **Invariant:** one service per data directory. It holds an exclusive lock on `service.lock` for its whole life and
//! only touches the socket file (removing a stale one, binding, unlinking at exit) while holding it.
//!
//! **Invariant:** no frame over [`MAX_OUTGOING_FRAME`] leaves the service, because the relay passes frames to a
//! browser that refuses them. `list` and `history` pages shrink until they fit; anything else that does not fit is
//! replaced by a `too_large` error (or dropped, for an event).
//!
//! Each connection has a reader (this module's dispatch) and a writer task; replies and events reach the writer
//! through one channel, so frames never interleave. A verified `add` (it asks the server first) and `find` (it may
//! wait for one) run in tasks of their own that send their reply to that channel when done, so the connection goes
//! on answering meanwhile; their replies may overtake earlier ones, and are matched by id.

use std::fs::{File, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use futures_util::{SinkExt, StreamExt};
use protocol::{
    AddManyResult, AddOutcome, AddResult, Command, CountResult, ErrorCode, FindResult,
    HistoryResult, MAX_INCOMING_FRAME, MAX_OUTGOING_FRAME, PingResult, Reply, SettingsResult,
    StatusCounts, StatusResult,
};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::engine::{ApiError, Engine, EngineConfig, StartError};
use crate::ipc::{self, Listener};
use crate::paths::{self, LOCK_FILE};
use crate::signals::Signals;

/// Frames queued for one connection's writer. Replies wait for room; a subscriber that falls behind skips events.
const WRITE_QUEUE: usize = 64;

/// What the service needs to know about where it lives.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub data_dir: PathBuf,
    /// Passed to the engine: where downloads go while the settings name no folder.
    pub default_download_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Path(#[from] paths::PathError),
    #[error("another sdm service is already running for {}{}", dir.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    #[error("cannot listen on {}: {source}", path.display())]
    Listen { path: PathBuf, source: io::Error },
    #[error("the engine did not start: {0}")]
    Engine(StartError),
    #[error("cannot watch for signals: {0}")]
    Signal(io::Error),
}

/// Run the service until SIGTERM, SIGINT or SIGHUP, then shut the engine down (state is written) and return.
pub async fn run(config: ServiceConfig) -> Result<(), ServiceError> {
    // Watch for signals first: one that came before the handlers would kill us without a shutdown.
    let mut signals = Signals::new().map_err(ServiceError::Signal)?;
    let dir = &config.data_dir;
    // Refuses a folder of another user's, or one anyone may write to, before anything in it is opened.
    paths::ensure_data_dir(dir)?;
    let _lock = take_lock(dir)?;
    let socket = ipc::endpoint(dir);
    let mut listener = Listener::bind(dir).map_err(|source| ServiceError::Listen {
        path: socket.clone(),
        source,
    })?;
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "listening");

    // Bound before the engine starts: a client that connects now waits in the backlog instead of failing.
    let started = Engine::start(EngineConfig {
        data_dir: dir.clone(),
        default_download_dir: config.default_download_dir.clone(),
        crash_after_keyed_add: std::env::var_os("SDM_TEST_CRASH_AFTER_ADD").map(PathBuf::from),
    })
    .await;
    let engine = match started {
        Ok(engine) => engine,
        Err(e) => {
            listener.close();
            return Err(ServiceError::Engine(e));
        }
    };
    for warning in engine.warnings() {
        tracing::warn!(%warning, "engine start-up");
    }

    let control = Control {
        data_dir: dir.clone(),
        stop: CancellationToken::new(),
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    let engine = engine.clone();
                    let control = control.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_connection(engine, control, stream).await {
                            tracing::debug!(cause = %e, "connection ended");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            stop = signals.recv() => { tracing::info!("{}: shutting down", stop.name); break; }
            _ = control.stop.cancelled() => { tracing::info!("asked to stop: shutting down"); break; }
        }
    }
    // Removed while the lock is still held, so a new service cannot have bound it in the meantime.
    listener.close();
    engine.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Take the data directory's lock, recording our pid in it. The lock lasts as long as the returned file is open.
fn take_lock(dir: &Path) -> Result<File, ServiceError> {
    let path = dir.join(LOCK_FILE);
    let lock_err = |source| ServiceError::Lock {
        path: path.clone(),
        source,
    };
    // Opened without truncating and never through a link: a link planted at its name cannot make the pid below
    // overwrite another file.
    let mut file = paths::open_lock(dir).map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(ServiceError::AlreadyRunning {
                dir: dir.to_path_buf(),
                pid: crate::client::service_pid(dir),
            });
        }
        Err(TryLockError::Error(e)) => return Err(lock_err(e)),
    }
    file.set_len(0).map_err(lock_err)?;
    writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
    Ok(file)
}

/// What a connection needs of the service beyond the engine: for `status` and `stop`.
#[derive(Clone)]
struct Control {
    data_dir: PathBuf,
    /// Cancelled by `stop`: the service then shuts down as on SIGTERM (every download checkpointed) and exits.
    stop: CancellationToken,
}

/// Read requests from one connection and answer them, until it closes. Most are answered in order; a verified `add`
/// and `find` answer from tasks of their own.
async fn serve_connection(engine: Engine, control: Control, stream: ipc::Stream) -> io::Result<()> {
    let (read, write) = ipc::split(stream);
    let mut frames = FramedRead::new(read, protocol::codec::codec(MAX_INCOMING_FRAME));
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let writer = tokio::spawn(async move {
        let mut sink = FramedWrite::new(write, protocol::codec::codec(MAX_OUTGOING_FRAME));
        let mut frames = Vec::with_capacity(WRITE_QUEUE);
        // Frames queued together (a download's end is three events) go out in one write, not one write each.
        while rx.recv_many(&mut frames, WRITE_QUEUE).await > 0 {
            for frame in frames.drain(..) {
                if sink.feed(bytes::Bytes::from(frame)).await.is_err() {
                    return;
                }
            }
            if SinkExt::<bytes::Bytes>::flush(&mut sink).await.is_err() {
                return;
            }
        }
    });
    let mut forwarder: Option<tokio::task::JoinHandle<()>> = None;
    let result = loop {
        let frame = match frames.next().await {
            None => break Ok(()),
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                // An oversize length prefix: nothing after it can be framed, so answer and hang up.
                let reply = Reply::err(None, ErrorCode::TooLarge, format!("{e}"));
                let _ = tx.send(encode_reply(&reply)).await;
                break Err(e);
            }
        };
        let reply = match protocol::parse_request(&frame) {
            Err(reply) => encode_reply(&reply),
            Ok(request) => {
                if matches!(request.command, Command::Subscribe) && forwarder.is_none() {
                    forwarder = Some(forward_events(
                        engine.clone(),
                        engine.subscribe(),
                        tx.clone(),
                    ));
                }
                // Commands that may wait (a verified add asks the server first, `find` waits for one, `set_url` asks
                // the new address) must not hold up the connection: they answer later, from a task of their own.
                let id = request.id;
                match request.command {
                    Command::Add(add) if add.expect.is_some() => {
                        // Its key counts as being verified from now on: a `find` read after it waits for it.
                        let added = engine.add_verified(add);
                        let engine = engine.clone();
                        reply_later(
                            &tx,
                            async move { answer_add(&engine, id, added.await).await },
                        );
                        continue;
                    }
                    command @ (Command::Find { .. } | Command::SetUrl { .. }) => {
                        let engine = engine.clone();
                        reply_later(&tx, async move { dispatch(&engine, id, command).await });
                        continue;
                    }
                    Command::Status => encode_reply(&Reply::ok(id, status(&engine, &control))),
                    Command::Stop => {
                        // Answered first; the caller then waits for this connection to close, which happens once
                        // the engine has checkpointed and the process exits.
                        let _ = tx
                            .send(encode_reply(&Reply::ok(id, serde_json::json!({}))))
                            .await;
                        control.stop.cancel();
                        continue;
                    }
                    command => dispatch(&engine, id, command).await,
                }
            }
        };
        if tx.send(reply).await.is_err() {
            break Ok(());
        }
    };
    if let Some(forwarder) = forwarder {
        forwarder.abort();
    }
    drop(tx);
    let _ = writer.await;
    result
}

/// Answer from a task of its own, which runs to the end even if the connection closes first (an add is then found
/// with `find`), and then sends its reply to the connection's writer.
fn reply_later(tx: &mpsc::Sender<Vec<u8>>, reply: impl Future<Output = Vec<u8>> + Send + 'static) {
    let tx = tx.clone();
    tokio::spawn(async move {
        let _ = tx.send(reply.await).await;
    });
}

/// Pass engine events to a connection's writer. A connection too slow to keep up misses some; it is then sent the
/// state of every download again, so what it shows is never left stale.
fn forward_events(
    engine: Engine,
    mut events: broadcast::Receiver<protocol::Event>,
    tx: mpsc::Sender<Vec<u8>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let batch = match events.recv().await {
                // With the events that came with it, so the writer takes them in one go.
                Ok(event) => {
                    let mut batch = vec![event];
                    while let Ok(event) = events.try_recv() {
                        batch.push(event);
                    }
                    batch
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(
                        skipped = n,
                        "subscriber lagging; sending every download's state again"
                    );
                    resync(&engine)
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            for event in batch {
                match protocol::to_frame(&event, MAX_OUTGOING_FRAME) {
                    Ok(frame) => {
                        if tx.send(frame).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(cause = %e, "dropping an oversize event"),
                }
            }
        }
    })
}

/// A `state` event for every download.
fn resync(engine: &Engine) -> Vec<protocol::Event> {
    let mut out = Vec::new();
    loop {
        let page = engine.list(protocol::PageRequest {
            offset: out.len(),
            limit: None,
        });
        let done = page.downloads.is_empty() || out.len() + page.downloads.len() >= page.total;
        out.extend(
            page.downloads
                .into_iter()
                .map(|download| protocol::Event::State { download }),
        );
        if done {
            return out;
        }
    }
}

/// Run one command and encode its reply (at most [`MAX_OUTGOING_FRAME`] bytes).
pub async fn dispatch(engine: &Engine, id: u64, command: Command) -> Vec<u8> {
    let empty = serde_json::json!({});
    // A change is acknowledged only once it is on disk (`add` sees to its own, in `answer_add`).
    let changes_queue = matches!(
        command,
        Command::Pause { .. }
            | Command::Resume { .. }
            | Command::Cancel { .. }
            | Command::Remove { .. }
            | Command::Update { .. }
            | Command::SetUrl { .. }
            | Command::Move { .. }
            | Command::PauseAll
            | Command::ResumeAll
            | Command::ClearFinished
    );
    let reply = match command {
        Command::Ping => Reply::ok(
            id,
            PingResult {
                version: crate::client::version(),
            },
        ),
        Command::Add(add) => {
            let added = if add.expect.is_some() {
                engine.add_verified(add).await
            } else {
                engine.add(add).await
            };
            return answer_add(engine, id, added).await;
        }
        Command::Find { client_key } => result(
            id,
            engine
                .find(&client_key)
                .await
                .map(|download| FindResult { download }),
        ),
        Command::List(page) => {
            let list = engine.list(page);
            return encode_page(id, list, |l| &mut l.downloads);
        }
        Command::History(page) => match engine.history(page) {
            Ok(history) => return encode_page(id, history, |h: &mut HistoryResult| &mut h.items),
            Err(e) => error(id, e),
        },
        Command::Pause { download_id } => result(id, engine.pause(download_id).map(|()| &empty)),
        Command::Resume { download_id } => result(id, engine.resume(download_id).map(|()| &empty)),
        Command::Cancel { download_id } => result(id, engine.cancel(download_id).map(|()| &empty)),
        Command::Remove {
            download_id,
            delete_file,
        } => result(id, engine.remove(download_id, delete_file).map(|()| &empty)),
        Command::Open {
            download_id,
            folder,
        } => result(id, open(engine, download_id, folder).map(|()| &empty)),
        Command::ClearHistory => result(id, engine.clear_history().await.map(|()| &empty)),
        Command::GetSettings => Reply::ok(
            id,
            SettingsResult {
                settings: engine.settings(),
            },
        ),
        Command::SetSettings { settings } => result(
            id,
            engine
                .set_settings(settings)
                .await
                .map(|settings| SettingsResult { settings }),
        ),
        Command::Update {
            download_id,
            bandwidth_limit,
            threads,
        } => result(
            id,
            engine
                .update(download_id, bandwidth_limit, threads)
                .map(|()| &empty),
        ),
        Command::SetUrl {
            download_id,
            url,
            restart,
            headers,
            referrer,
        } => {
            let to = crate::engine::NewAddress {
                url,
                restart,
                headers,
                referrer,
            };
            result(id, engine.set_url(download_id, to).await.map(|()| &empty))
        }
        Command::Move { download_id, to } => {
            result(id, engine.move_to(download_id, to).map(|()| &empty))
        }
        Command::PauseAll => Reply::ok(
            id,
            CountResult {
                count: engine.pause_all(),
            },
        ),
        Command::ResumeAll => Reply::ok(
            id,
            CountResult {
                count: engine.resume_all(),
            },
        ),
        Command::ClearFinished => Reply::ok(
            id,
            CountResult {
                count: engine.clear_finished(),
            },
        ),
        // Written to `state.json` by the engine, once for the whole batch, before it answers.
        Command::AddMany { items } => result(
            id,
            engine.add_many(items).await.map(|results| AddManyResult {
                results: results
                    .into_iter()
                    .map(|r| match r {
                        Ok(added) => AddOutcome::Added(added),
                        Err(e) => AddOutcome::failed(e.code, e.message),
                    })
                    .collect(),
            }),
        ),
        // The forwarder was started by the caller, which owns the connection.
        Command::Subscribe => Reply::ok(id, &empty),
        // The connection answers these (they need the service, not only the engine); `dispatch` is never given them.
        Command::Status | Command::Stop => Reply::err(
            Some(id),
            ErrorCode::Internal,
            "status and stop are answered by the service's connection",
        ),
    };
    if changes_queue && reply.ok {
        engine.persist().await;
    }
    encode_reply(&reply)
}

/// `status`: this service's version, pid and data folder, and its downloads counted by status.
fn status(engine: &Engine, control: &Control) -> StatusResult {
    let mut counts = StatusCounts::default();
    let mut offset = 0;
    loop {
        let page = engine.list(protocol::PageRequest {
            offset,
            limit: None,
        });
        offset += page.downloads.len();
        for download in &page.downloads {
            counts.add(download.status);
        }
        if page.downloads.is_empty() || offset >= page.total {
            break;
        }
    }
    StatusResult {
        version: crate::client::version(),
        pid: std::process::id(),
        data_dir: control.data_dir.display().to_string(),
        counts,
    }
}

/// The reply to an `add`, sent only once the download is in `state.json`: the browser erases its own copy of a
/// captured download when `add` is answered, so a crash right after the reply must not lose it.
async fn answer_add(engine: &Engine, id: u64, added: Result<AddResult, ApiError>) -> Vec<u8> {
    let reply = result(id, added);
    if reply.ok {
        engine.persist().await;
    }
    encode_reply(&reply)
}

fn result<T: Serialize>(id: u64, r: Result<T, ApiError>) -> Reply {
    match r {
        Ok(value) => Reply::ok(id, value),
        Err(e) => error(id, e),
    }
}

fn error(id: u64, e: ApiError) -> Reply {
    Reply::err(Some(id), e.code, e.message)
}

/// Encode a reply, replacing one that would be too large with a `too_large` error.
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    match protocol::to_frame(reply, MAX_OUTGOING_FRAME) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::warn!(id = ?reply.id, cause = %e, "reply too large");
            let err = Reply::err(reply.id, ErrorCode::TooLarge, format!("{e}: ask for less"));
            protocol::to_frame(&err, MAX_OUTGOING_FRAME).expect("an error reply is small")
        }
    }
}

/// Encode a page of a list, halving it until the reply fits in a frame; its `total` still counts every item, so
/// the client pages on from `offset + items.len()`.
fn encode_page<P: Serialize, T>(
    id: u64,
    mut page: P,
    items: impl Fn(&mut P) -> &mut Vec<T>,
) -> Vec<u8> {
    loop {
        let reply = Reply::ok(id, &page);
        match protocol::to_frame(&reply, MAX_OUTGOING_FRAME) {
            Ok(frame) => return frame,
            Err(e) => {
                let list = items(&mut page);
                if list.len() <= 1 {
                    return encode_reply(&Reply::err(
                        Some(id),
                        ErrorCode::TooLarge,
                        format!("{e}: one item does not fit in a reply"),
                    ));
                }
                let half = list.len() / 2;
                list.truncate(half);
            }
        }
    }
}

/// Open a completed download's file or folder with the desktop's handler. A file that opening could run (see
/// [`open_target`]) opens its folder instead.
fn open(engine: &Engine, id: protocol::DownloadId, folder: bool) -> Result<(), ApiError> {
    let file = engine.completed_path(id)?;
    // Followed through a link, so a link to a program counts as one.
    let executable = std::fs::metadata(&file).is_ok_and(|m| is_executable(&m));
    let target = open_target(&file, folder, executable);
    if !folder && target != file {
        tracing::info!(id, "opening the folder of a file that could run");
    }
    if !target.exists() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("{} no longer exists", target.display()),
        ));
    }
    let (opener, hint) = if cfg!(target_os = "macos") {
        ("open", "")
    } else if cfg!(windows) {
        ("explorer", "")
    } else {
        ("xdg-open", "; install xdg-utils")
    };
    let child = tokio::process::Command::new(opener)
        .arg(&target)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| ApiError::new(ErrorCode::Io, format!("cannot run {opener}: {e}{hint}")))?;
    // Reap the opener when it is done; it may keep running for as long as the application it started.
    tokio::spawn(async move {
        let mut child = child;
        let _ = child.wait().await;
    });
    Ok(())
}

/// Whether the file's mode lets it run (any x bit).
#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

/// Windows has no x bit: what runs is told by the extension ([`LAUNCHER_EXTENSIONS`]).
#[cfg(windows)]
fn is_executable(_meta: &std::fs::Metadata) -> bool {
    false
}

/// Extensions (compared without case) of files the desktop runs when it opens them, or hands to something that
/// does: launchers, scripts, Java archives, AppImages, self-extracting installers (`.run`, `.bin`) and Windows
/// programs (which Wine, when installed, runs).
const LAUNCHER_EXTENSIONS: &[&str] = &[
    "desktop", "jar", "sh", "bash", "exe", "msi", "com", "scr", "bat", "cmd", "ps1", "vbs",
    "appimage", "run", "bin",
];

/// What `open` hands to the desktop for the completed `file`: its folder when `folder` is asked, or when opening the
/// file could run it (it is `executable`, any x bit set, or of a launcher type); otherwise the file.
fn open_target(file: &Path, folder: bool, executable: bool) -> PathBuf {
    let launcher = file
        .extension()
        .map(|e| e.to_string_lossy())
        .is_some_and(|e| {
            LAUNCHER_EXTENSIONS
                .iter()
                .any(|l| e.eq_ignore_ascii_case(l))
        });
    match file.parent() {
        Some(parent) if folder || executable || launcher => parent.to_path_buf(),
        _ => file.to_path_buf(),
    }
}

#[cfg(test)]
mod open_tests {
    use super::*;

    #[test]
    fn files_that_could_run_open_their_folder() {
        let dir = Path::new("/home/ann/Downloads");
        for name in [
            "evil.desktop",
            "app.jar",
            "x.sh",
            "Setup.EXE",
            "a.bat",
            "a.Cmd",
            "a.ps1",
            "Tool.AppImage",
            "tool.appimage",
            "installer.run",
            "firmware.bin",
            "a.msi",
            "archive.tar.gz.sh",
        ] {
            assert_eq!(open_target(&dir.join(name), false, false), dir, "{name}");
        }
        assert_eq!(
            open_target(&dir.join("program"), false, true),
            dir,
            "an x bit"
        );
        assert_eq!(
            open_target(&dir.join("notes.txt"), false, true),
            dir,
            "an x bit"
        );
    }

    #[test]
    fn other_files_open_themselves_and_folder_opens_the_folder() {
        let dir = Path::new("/home/ann/Downloads");
        for name in [
            "paper.pdf",
            "song.mp3",
            "archive.tar.gz",
            "desktop",
            "sh",
            "x.desktop.txt",
            ".jar",
        ] {
            let file = dir.join(name);
            assert_eq!(open_target(&file, false, false), file, "{name}");
            assert_eq!(open_target(&file, true, false), dir, "{name}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{DownloadInfo, ListResult};

    fn info(id: u64, url_len: usize) -> DownloadInfo {
        DownloadInfo {
            id,
            url: format!("http://127.0.0.1:1/{}", "a".repeat(url_len)),
            filename: "f".into(),
            path: "/tmp/f".into(),
            status: protocol::Status::Failed,
            total: None,
            downloaded: 0,
            speed: 0,
            eta: None,
            threads: 8,
            connections: 0,
            retries: 5,
            bandwidth_limit: 0,
            error: None,
            created_at: 0,
            finished_at: None,
        }
    }

    #[test]
    fn a_page_too_large_for_a_frame_is_halved_until_it_fits() {
        let list = ListResult {
            downloads: (0..300).map(|i| info(i, 8 * 1024)).collect(),
            total: 300,
        };
        let frame = encode_page(9, list, |l| &mut l.downloads);
        assert!(frame.len() <= MAX_OUTGOING_FRAME);
        let reply: Reply = serde_json::from_slice(&frame).unwrap();
        let result: ListResult = reply.into_result().unwrap();
        assert_eq!(result.total, 300);
        assert!(!result.downloads.is_empty() && result.downloads.len() < 300);
    }

    #[test]
    fn a_page_that_fits_is_untouched() {
        let list = ListResult {
            downloads: (0..3).map(|i| info(i, 10)).collect(),
            total: 3,
        };
        let frame = encode_page(1, list.clone(), |l| &mut l.downloads);
        let reply: Reply = serde_json::from_slice(&frame).unwrap();
        assert_eq!(reply.into_result::<ListResult>().unwrap(), list);
    }

    #[test]
    fn an_item_that_cannot_fit_becomes_a_too_large_error() {
        let list = ListResult {
            downloads: vec![info(1, MAX_OUTGOING_FRAME)],
            total: 1,
        };
        let frame = encode_page(4, list, |l| &mut l.downloads);
        let reply: Reply = serde_json::from_slice(&frame).unwrap();
        assert_eq!(reply.id, Some(4));
        assert_eq!(reply.error.unwrap().code, ErrorCode::TooLarge);
    }
}
