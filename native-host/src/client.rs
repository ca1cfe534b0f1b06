//! A connection to the service: how the relay and the CLI reach the engine.
//!
//! [`connect_or_start`] finds the service on its socket and, when none answers, starts `sdm serve` detached (its own
//! process group, so a browser that kills the relay's group does not take the service with it) and waits for it.
//! [`Client`] sends typed requests on that connection and waits for the matching reply, skipping pushed events.
//!
//! **Version handshake:** a service found running is asked its version (`ping`) before the connection is used. When
//! this binary is newer, it asks the service to `stop` (a service too old to know `stop` gets SIGTERM, which does the
//! same), waits for it to exit, and starts itself: the old service checkpoints every download on its way out and the
//! new one resumes them. An older binary talks to a newer service as it is, and never stops it.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::{
    Command, ErrorBody, ErrorCode, Event, Incoming, MAX_INCOMING_FRAME, PingResult, Reply, Request,
};
use tokio::time::Instant;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::ipc::{self, Stream};
use crate::paths::{self, LOCK_FILE, SERVICE_LOG};

/// How long to wait for a service we started to open its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request may wait for its reply: the engine answers at once, so silence means a stuck service.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a service asked to stop may take to checkpoint and exit (its transfers get 10 s to wind down).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Logs past this size are started afresh rather than appended to.
pub const MAX_LOG_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Path(#[from] paths::PathError),
    #[error("cannot start the sdm service ({}): {source}", exe.display())]
    Spawn { exe: PathBuf, source: io::Error },
    #[error(
        "the sdm service did not answer on {} within {}s: see {}",
        socket.display(),
        timeout.as_secs(),
        log.display()
    )]
    StartTimeout {
        socket: PathBuf,
        log: PathBuf,
        timeout: Duration,
    },
    #[error("lost the connection to the sdm service: {0}")]
    Io(#[from] io::Error),
    #[error("the sdm service closed the connection")]
    Closed,
    #[error(
        "the sdm service did not answer within {}s: check service.log, or stop the service and try again",
        .0.as_secs()
    )]
    Timeout(Duration),
    #[error("the sdm service sent a frame that is not a reply: {0}")]
    BadFrame(serde_json::Error),
    /// The service answered, with an error.
    #[error("{}", .0.message)]
    Remote(ErrorBody),
    #[error(
        "the sdm service (pid {}) did not stop within {}s: see {}",
        pid.map_or("unknown".to_string(), |p| p.to_string()),
        STOP_TIMEOUT.as_secs(),
        log.display()
    )]
    StopTimeout { pid: Option<u32>, log: PathBuf },
}

/// The version this binary speaks for: its own, or `SDM_TEST_VERSION` when set (tests of the version handshake).
pub fn version() -> String {
    std::env::var("SDM_TEST_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
}

/// True when `ours` is a later version than `theirs`; false when either is not a version.
fn is_newer(ours: &str, theirs: &str) -> bool {
    match (semver::Version::parse(ours), semver::Version::parse(theirs)) {
        (Ok(ours), Ok(theirs)) => ours > theirs,
        _ => false,
    }
}

/// Connect to the service of `data_dir` when one is running; `None` when none answers. Nothing is started.
pub async fn connect_running(data_dir: &Path) -> Result<Option<Stream>, ClientError> {
    paths::check_owner(data_dir)?;
    ipc::check_endpoint(data_dir)?;
    Ok(ipc::connect(data_dir).await.ok())
}

/// Connect to the service of `data_dir`, starting it if nothing answers, and replacing it when it is older than this
/// binary (the version handshake).
///
/// A data directory or socket that belongs to another user is refused before anything is sent to it: its owner could
/// read our requests (cookies included) or answer in our service's name.
pub async fn connect_or_start(data_dir: &Path) -> Result<Stream, ClientError> {
    match connect_running(data_dir).await? {
        Some(stream) => match handshake(stream, data_dir).await? {
            Some(stream) => Ok(stream),
            None => start(data_dir).await,
        },
        None => start(data_dir).await,
    }
}

/// Ask a running service its version. `Some(stream)` to go on with it; `None` once an older one has stopped.
async fn handshake(stream: Stream, data_dir: &Path) -> Result<Option<Stream>, ClientError> {
    let mut framed = Framed::new(stream, protocol::codec::codec(MAX_INCOMING_FRAME));
    let asked = tokio::time::timeout(
        START_TIMEOUT,
        call_on::<PingResult>(&mut framed, Command::Ping),
    );
    let theirs = match asked.await {
        Ok(Ok(ping)) => ping.version,
        Ok(Err(e)) => {
            tracing::warn!(cause = %e, "the service did not answer ping; going on without the version check");
            return Ok(Some(framed.into_inner()));
        }
        Err(_) => return Err(ClientError::Timeout(START_TIMEOUT)),
    };
    let ours = version();
    if !is_newer(&ours, &theirs) {
        // Only a ping went out and only its reply came back, so nothing is left in the codec's buffers.
        return Ok(Some(framed.into_inner()));
    }
    tracing::info!(%ours, %theirs, "the running service is older: asking it to stop");
    stop_on(&mut framed, data_dir).await?;
    Ok(None)
}

/// Ask the service on `framed` to stop, and wait until it has exited: the connection closes when its process ends,
/// after the engine's checkpoint and the release of its lock. A service that does not know `stop` gets SIGTERM.
async fn stop_on(
    framed: &mut Framed<Stream, LengthDelimitedCodec>,
    data_dir: &Path,
) -> Result<(), ClientError> {
    let pid = service_pid(data_dir);
    let waited = tokio::time::timeout(STOP_TIMEOUT, async {
        match call_on::<serde_json::Value>(framed, Command::Stop).await {
            Ok(_) | Err(ClientError::Closed) => {}
            Err(ClientError::Remote(body)) if body.code == ErrorCode::BadRequest => {
                tracing::info!(?pid, "the service does not know stop: sending SIGTERM");
                if let Some(pid) = pid {
                    terminate(pid)?;
                }
            }
            Err(e) => return Err(e),
        }
        while let Some(frame) = framed.next().await {
            if frame.is_err() {
                break;
            }
        }
        // The connection closes as the process winds down, a moment before it is gone.
        while pid.is_some_and(is_running) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    });
    match waited.await {
        Ok(result) => result,
        Err(_) => Err(ClientError::StopTimeout {
            pid,
            log: data_dir.join(SERVICE_LOG),
        }),
    }
}

/// Send SIGTERM to `pid`.
#[cfg(unix)]
fn terminate(pid: u32) -> io::Result<()> {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    }
    Ok(())
}

/// Every service on Windows knows `stop`: the port is newer than the command.
#[cfg(windows)]
fn terminate(_pid: u32) -> io::Result<()> {
    Ok(())
}

/// True while process `pid` exists and is not a zombie (Linux's `/proc`).
#[cfg(target_os = "linux")]
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) state ...`: the state follows the last `)`, since comm may hold anything.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// True while process `pid` exists: `kill(pid, 0)`. A zombie counts, but only our own child could be one of ours,
/// and [`spawn_service`] reaps it.
#[cfg(all(unix, not(target_os = "linux")))]
fn is_running(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// True while process `pid` exists and has not exited: a handle to it is not yet signalled. A process we may not
/// open (another user's) counts as running: the pid is taken.
#[cfg(windows)]
fn is_running(pid: u32) -> bool {
    use windows_sys::Win32::Foundation::{
        CloseHandle, ERROR_ACCESS_DENIED, GetLastError, WAIT_TIMEOUT,
    };
    use windows_sys::Win32::System::Threading::{
        OpenProcess, PROCESS_SYNCHRONIZE, WaitForSingleObject,
    };
    // SAFETY: a wait-only handle, closed before returning; null when there is no such process.
    #[allow(unsafe_code)]
    unsafe {
        let process = OpenProcess(PROCESS_SYNCHRONIZE, 0, pid);
        if process.is_null() {
            return GetLastError() == ERROR_ACCESS_DENIED;
        }
        let running = WaitForSingleObject(process, 0) == WAIT_TIMEOUT;
        CloseHandle(process);
        running
    }
}

/// Stop the service of `data_dir` when one runs, waiting until it has exited. Returns its pid, or `None` when no
/// service was running.
pub async fn stop_service(data_dir: &Path) -> Result<Option<u32>, ClientError> {
    let Some(stream) = connect_running(data_dir).await? else {
        return Ok(None);
    };
    let pid = service_pid(data_dir);
    let mut framed = Framed::new(stream, protocol::codec::codec(MAX_INCOMING_FRAME));
    stop_on(&mut framed, data_dir).await?;
    Ok(pid)
}

/// One request on a connection used for nothing else, and its result as `T`.
async fn call_on<T: serde::de::DeserializeOwned>(
    framed: &mut Framed<Stream, LengthDelimitedCodec>,
    command: Command,
) -> Result<T, ClientError> {
    let body = serde_json::to_vec(&Request { id: 1, command }).map_err(ClientError::BadFrame)?;
    framed.send(bytes::Bytes::from(body)).await?;
    loop {
        let frame = framed.next().await.ok_or(ClientError::Closed)??;
        match serde_json::from_slice(&frame).map_err(ClientError::BadFrame)? {
            Incoming::Reply(reply) => return reply.into_result().map_err(ClientError::Remote),
            Incoming::Event(_) => {}
        }
    }
}

/// Start the service of `data_dir` and connect to it.
async fn start(data_dir: &Path) -> Result<Stream, ClientError> {
    let socket = ipc::endpoint(data_dir);
    paths::ensure_data_dir(data_dir)?;
    spawn_service(data_dir)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        // Checked again on every try: the socket we wait for may be someone else's, planted in the meantime.
        ipc::check_endpoint(data_dir)?;
        match ipc::connect(data_dir).await {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => {
                tracing::warn!(socket = %socket.display(), cause = %e, "service did not come up");
                return Err(ClientError::StartTimeout {
                    socket,
                    log: data_dir.join(SERVICE_LOG),
                    timeout: START_TIMEOUT,
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Start `sdm serve` for `data_dir` in its own process group, with its stderr in `service.log`.
///
/// Two starters may race; the loser's service finds the lock taken and exits, and both connect to the winner.
fn spawn_service(data_dir: &Path) -> Result<(), ClientError> {
    // The path, not /proc/self/exe: when `sdm install` has replaced this binary, its successor is what starts.
    let exe = crate::install::current_exe().map_err(|e| ClientError::Spawn {
        exe: PathBuf::from("sdm"),
        source: io::Error::other(e.to_string()),
    })?;
    let log_path = data_dir.join(SERVICE_LOG);
    let log = open_log(&log_path).map_err(|source| ClientError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    tracing::info!(exe = %exe.display(), data_dir = %data_dir.display(), "starting the service");
    let mut command = std::process::Command::new(&exe);
    command
        .arg("serve")
        .env("SDM_HOME", data_dir)
        .current_dir(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let mut child =
        spawn_detached(&mut command).map_err(|source| ClientError::Spawn { exe, source })?;
    // Reap it whenever it exits, so a long-lived relay does not keep a zombie.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

/// Start `command` in its own process group, so a browser that kills the relay's group does not take the service
/// with it.
#[cfg(unix)]
fn spawn_detached(command: &mut std::process::Command) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    command.process_group(0).spawn()
}

/// Start `command` outside the browser's job object (Chrome and Firefox end a host's job, and every process in it,
/// with the host), with no console window. A job that forbids breaking away refuses the start; then it starts
/// inside the job, which is better than not at all.
#[cfg(windows)]
fn spawn_detached(command: &mut std::process::Command) -> io::Result<std::process::Child> {
    use std::os::windows::process::CommandExt;
    const DETACHED_PROCESS: u32 = 0x0000_0008;
    const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
    const CREATE_BREAKAWAY_FROM_JOB: u32 = 0x0100_0000;
    const CREATE_NO_WINDOW: u32 = 0x0800_0000;
    let flags = DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW;
    match command
        .creation_flags(flags | CREATE_BREAKAWAY_FROM_JOB)
        .spawn()
    {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            tracing::warn!(cause = %e, "cannot leave the browser's job; the service starts inside it");
            command.creation_flags(flags).spawn()
        }
        other => other,
    }
}

/// Open a log file for appending (private to the user), starting afresh once it has grown past [`MAX_LOG_BYTES`];
/// its folder's owner is checked first and a link at its name is refused ([`paths::open_log`]).
pub fn open_log(path: &Path) -> io::Result<std::fs::File> {
    paths::open_log(path, MAX_LOG_BYTES)
}

/// The pid recorded by the running service of `data_dir`, if any (for messages and tests).
pub fn service_pid(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join(LOCK_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Events a [`Client`] keeps while it waits for a reply: a client that never reads events (most CLI commands) holds
/// no more than this.
const HELD_EVENTS: usize = 256;

/// A request/reply connection to the service.
pub struct Client {
    framed: Framed<Stream, LengthDelimitedCodec>,
    next_id: u64,
    /// Events that came while a reply was awaited, for [`Client::next_event`]: a reply may be older than an event
    /// sent before it (a `list` taken just before a download completed), so dropping them could lose the news.
    held: VecDeque<Event>,
}

impl Client {
    pub fn new(stream: Stream) -> Client {
        Client {
            framed: Framed::new(stream, protocol::codec::codec(MAX_INCOMING_FRAME)),
            next_id: 1,
            held: VecDeque::new(),
        }
    }

    /// Connect to the service of the current environment's data directory, starting it if needed.
    pub async fn connect() -> Result<Client, ClientError> {
        let dir = paths::data_dir()?;
        Ok(Client::new(connect_or_start(&dir).await?))
    }

    /// Send a request and wait (at most [`REQUEST_TIMEOUT`]) for its reply; events that arrive meanwhile are kept for
    /// [`Client::next_event`] (at most [`HELD_EVENTS`], the oldest dropped first).
    pub async fn request(&mut self, command: Command) -> Result<Reply, ClientError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.request_untimed(command))
            .await
            .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))?
    }

    async fn request_untimed(&mut self, command: Command) -> Result<Reply, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let body = serde_json::to_vec(&Request { id, command }).map_err(ClientError::BadFrame)?;
        self.framed.send(bytes::Bytes::from(body)).await?;
        loop {
            match self.next_incoming().await? {
                Incoming::Reply(reply) if reply.id == Some(id) => return Ok(reply),
                Incoming::Reply(reply) => {
                    tracing::debug!(id = ?reply.id, "skipping a reply to another request");
                }
                Incoming::Event(event) => {
                    if self.held.len() == HELD_EVENTS {
                        self.held.pop_front();
                    }
                    self.held.push_back(event);
                }
            }
        }
    }

    /// Send a request and read its result as `T`; an error reply becomes [`ClientError::Remote`].
    pub async fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        command: Command,
    ) -> Result<T, ClientError> {
        self.request(command)
            .await?
            .into_result()
            .map_err(ClientError::Remote)
    }

    /// The next pushed event (after a `subscribe`), skipping stray replies.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        if let Some(event) = self.held.pop_front() {
            return Ok(event);
        }
        loop {
            if let Incoming::Event(event) = self.next_incoming().await? {
                return Ok(event);
            }
        }
    }

    async fn next_incoming(&mut self) -> Result<Incoming, ClientError> {
        let frame = self.framed.next().await.ok_or(ClientError::Closed)??;
        serde_json::from_slice(&frame).map_err(ClientError::BadFrame)
    }
}
