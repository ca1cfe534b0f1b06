//! A connection to the service: how the relay and the CLI reach the engine.
//!
//! [`connect_or_start`] finds the service on its socket and, when none answers, starts `sdm serve` detached (its own
//! process group, so a browser that kills the relay's group does not take the service with it) and waits for it.
//! [`Client`] sends typed requests on that connection and waits for the matching reply, skipping pushed events.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::{Command, ErrorBody, Event, Incoming, MAX_INCOMING_FRAME, Reply, Request};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::paths::{self, LOCK_FILE, SERVICE_LOG, SOCKET_FILE};

/// How long to wait for a service we started to open its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request may wait for its reply: the engine answers at once, so silence means a stuck service.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
}

/// Connect to the service of `data_dir`, starting it if nothing answers.
///
/// A data directory or socket that belongs to another user is refused before anything is sent to it: its owner could
/// read our requests (cookies included) or answer in our service's name.
pub async fn connect_or_start(data_dir: &Path) -> Result<UnixStream, ClientError> {
    let socket = data_dir.join(SOCKET_FILE);
    paths::check_owner(data_dir)?;
    paths::check_owner(&socket)?;
    if let Ok(stream) = UnixStream::connect(&socket).await {
        return Ok(stream);
    }
    paths::ensure_data_dir(data_dir)?;
    spawn_service(data_dir)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        // Checked again on every try: the socket we wait for may be someone else's, planted in the meantime.
        paths::check_owner(&socket)?;
        match UnixStream::connect(&socket).await {
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
    let exe = std::env::current_exe().map_err(|source| ClientError::Spawn {
        exe: PathBuf::from("sdm"),
        source,
    })?;
    let log_path = data_dir.join(SERVICE_LOG);
    let log = open_log(&log_path).map_err(|source| ClientError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    tracing::info!(exe = %exe.display(), data_dir = %data_dir.display(), "starting the service");
    let mut child = std::process::Command::new(&exe)
        .arg("serve")
        .env("SDM_HOME", data_dir)
        .current_dir(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|source| ClientError::Spawn { exe, source })?;
    // Reap it whenever it exits, so a long-lived relay does not keep a zombie.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

/// Open a log file for appending (private to the user), starting afresh once it has grown past [`MAX_LOG_BYTES`].
pub fn open_log(path: &Path) -> io::Result<std::fs::File> {
    let too_big = std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_LOG_BYTES);
    let mut options = OpenOptions::new();
    options.create(true).mode(0o600);
    if too_big {
        options.write(true).truncate(true);
    } else {
        options.append(true);
    }
    options.open(path)
}

/// The pid recorded by the running service of `data_dir`, if any (for messages and tests).
pub fn service_pid(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join(LOCK_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A request/reply connection to the service.
pub struct Client {
    framed: Framed<UnixStream, LengthDelimitedCodec>,
    next_id: u64,
}

impl Client {
    pub fn new(stream: UnixStream) -> Client {
        Client {
            framed: Framed::new(stream, protocol::codec::codec(MAX_INCOMING_FRAME)),
            next_id: 1,
        }
    }

    /// Connect to the service of the current environment's data directory, starting it if needed.
    pub async fn connect() -> Result<Client, ClientError> {
        let dir = paths::data_dir()?;
        Ok(Client::new(connect_or_start(&dir).await?))
    }

    /// Send a request and wait (at most [`REQUEST_TIMEOUT`]) for its reply; events that arrive meanwhile are dropped.
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
                Incoming::Event(_) => {}
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
