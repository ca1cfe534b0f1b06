//! The service's transport: a local connection carrying the frames, one per data directory.
//!
//! - Unix: the socket `<data dir>/sdm.sock`, owner-only (0600, bound inside a fresh 0700 folder then moved into
//!   place), whose owner a client checks before it connects ([`check_endpoint`]).
//! - Windows: the named pipe `\\.\pipe\sdm-<hash of the data dir>`, local only (remote clients are rejected), its
//!   first instance created by the service (so nobody who made the name first is served as us); the pipe's default
//!   DACL grants the user who created it (with SYSTEM and Administrators) and no one else.
//!
//! Both give a [`Stream`] that reads and writes bytes, split with [`split`] into halves that move on their own;
//! the service and its clients are written once over them.

pub use imp::*;

#[cfg(unix)]
mod imp {
    use std::io;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    use tokio::net::{UnixListener, UnixStream};

    use crate::paths::{self, PathError, SOCKET_FILE};

    /// A connection to or from the service.
    pub type Stream = UnixStream;
    /// What [`split`] gives to read from.
    pub type ReadHalf = tokio::net::unix::OwnedReadHalf;
    /// What [`split`] gives to write to.
    pub type WriteHalf = tokio::net::unix::OwnedWriteHalf;

    /// The halves of `stream`, to read and write from different tasks.
    pub fn split(stream: Stream) -> (ReadHalf, WriteHalf) {
        stream.into_split()
    }

    /// Where the service of `data_dir` listens: its socket.
    pub fn endpoint(data_dir: &Path) -> PathBuf {
        data_dir.join(SOCKET_FILE)
    }

    /// Refuse a socket that belongs to another user: its owner could read our requests (cookies included) or
    /// answer in our service's name.
    pub fn check_endpoint(data_dir: &Path) -> Result<(), PathError> {
        paths::check_owner(&endpoint(data_dir))
    }

    /// Connect to the service of `data_dir`.
    pub async fn connect(data_dir: &Path) -> io::Result<Stream> {
        UnixStream::connect(endpoint(data_dir)).await
    }

    /// The service's listening socket.
    pub struct Listener {
        listener: UnixListener,
        path: PathBuf,
    }

    impl Listener {
        /// Bind the socket of `data_dir`, replacing a stale file (the caller holds the service lock, so no live
        /// service owns it), owner-only.
        ///
        /// The socket is bound inside a fresh 0700 folder, made 0600, then renamed into place: even in a data
        /// directory that others can enter (an `$SDM_HOME` the user made), there is no moment when it is open to
        /// them. A listening socket keeps working across a rename, since clients reach it through the inode.
        pub fn bind(data_dir: &Path) -> io::Result<Listener> {
            let socket = endpoint(data_dir);
            let private = data_dir.join(format!(".bind-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&private);
            std::fs::DirBuilder::new().mode(0o700).create(&private)?;
            let staged = private.join(SOCKET_FILE);
            let bound = UnixListener::bind(&staged).and_then(|listener| {
                std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
                match std::fs::remove_file(&socket) {
                    Ok(()) => tracing::info!(socket = %socket.display(), "removed a stale socket"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                std::fs::rename(&staged, &socket)?;
                Ok(listener)
            });
            let _ = std::fs::remove_dir_all(&private);
            Ok(Listener {
                listener: bound?,
                path: socket,
            })
        }

        /// The next client.
        pub async fn accept(&mut self) -> io::Result<Stream> {
            Ok(self.listener.accept().await?.0)
        }

        /// Stop listening and remove the socket (the caller still holds the lock, so no new service has bound it
        /// in the meantime).
        pub fn close(self) {
            drop(self.listener);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(windows)]
mod imp {
    use std::io;
    use std::path::{Path, PathBuf};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::windows::named_pipe::{
        ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
    };
    use windows_sys::Win32::Foundation::ERROR_PIPE_BUSY;

    use crate::paths::PathError;

    /// How often, and how long apart, a client tries again while every instance of the pipe is taken (the service
    /// makes the next one as soon as it accepted a client).
    const BUSY_TRIES: u32 = 100;
    const BUSY_WAIT: Duration = Duration::from_millis(10);

    /// A connection to or from the service: a pipe's client or server end.
    #[derive(Debug)]
    pub enum Stream {
        Client(NamedPipeClient),
        Server(NamedPipeServer),
    }

    /// What [`split`] gives to read from.
    pub type ReadHalf = tokio::io::ReadHalf<Stream>;
    /// What [`split`] gives to write to.
    pub type WriteHalf = tokio::io::WriteHalf<Stream>;

    /// The halves of `stream`, to read and write from different tasks.
    pub fn split(stream: Stream) -> (ReadHalf, WriteHalf) {
        tokio::io::split(stream)
    }

    /// The pipe of `data_dir`: named by a hash of the folder (compared without case, as Windows compares paths),
    /// so each data directory has its own service.
    pub fn endpoint(data_dir: &Path) -> PathBuf {
        let folder = data_dir.to_string_lossy().to_lowercase();
        let hash = Sha256::digest(folder.as_bytes());
        let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
        PathBuf::from(format!(r"\\.\pipe\sdm-{hex}"))
    }

    /// Nothing to check by path on Windows: the pipe's DACL admits its creator's user only.
    pub fn check_endpoint(_data_dir: &Path) -> Result<(), PathError> {
        Ok(())
    }

    /// Connect to the service of `data_dir`, waiting a little while every instance of its pipe is taken.
    pub async fn connect(data_dir: &Path) -> io::Result<Stream> {
        let name = endpoint(data_dir);
        let mut tries = 0;
        loop {
            match ClientOptions::new().open(&name) {
                Ok(client) => return Ok(Stream::Client(client)),
                Err(e)
                    if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) && tries < BUSY_TRIES =>
                {
                    tries += 1;
                    tokio::time::sleep(BUSY_WAIT).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The service's pipe: one instance waiting for the next client.
    pub struct Listener {
        name: PathBuf,
        next: NamedPipeServer,
    }

    impl Listener {
        /// Create the first instance of the pipe of `data_dir`; fails when the name exists already (another service,
        /// or someone squatting on it).
        pub fn bind(data_dir: &Path) -> io::Result<Listener> {
            let name = endpoint(data_dir);
            let next = ServerOptions::new()
                .first_pipe_instance(true)
                .reject_remote_clients(true)
                .create(&name)?;
            Ok(Listener { name, next })
        }

        /// The next client; a new instance takes its place for the one after.
        pub async fn accept(&mut self) -> io::Result<Stream> {
            self.next.connect().await?;
            let fresh = ServerOptions::new()
                .reject_remote_clients(true)
                .create(&self.name)?;
            Ok(Stream::Server(std::mem::replace(&mut self.next, fresh)))
        }

        /// Stop listening: the pipe is gone with its last instance.
        pub fn close(self) {}
    }

    impl AsyncRead for Stream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.get_mut() {
                Stream::Client(s) => Pin::new(s).poll_read(cx, buf),
                Stream::Server(s) => Pin::new(s).poll_read(cx, buf),
            }
        }
    }

    impl AsyncWrite for Stream {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            match self.get_mut() {
                Stream::Client(s) => Pin::new(s).poll_write(cx, buf),
                Stream::Server(s) => Pin::new(s).poll_write(cx, buf),
            }
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.get_mut() {
                Stream::Client(s) => Pin::new(s).poll_flush(cx),
                Stream::Server(s) => Pin::new(s).poll_flush(cx),
            }
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.get_mut() {
                Stream::Client(s) => Pin::new(s).poll_shutdown(cx),
                Stream::Server(s) => Pin::new(s).poll_shutdown(cx),
            }
        }
    }
}
