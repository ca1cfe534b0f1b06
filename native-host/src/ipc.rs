//! The service's transport: a local connection carrying the frames, one per data directory.
//!
//! - Unix: the socket `<data dir>/sdm.sock`, owner-only (0600, bound inside a fresh 0700 folder then moved into
//!   place), whose owner a client checks before it connects ([`check_endpoint`]).
//! - Windows: the named pipe `\\.\pipe\sdm-<hash of the data dir>`, local only (remote clients are rejected), its
//!   first instance created by the service (so nobody who made the name first is served as us), with a DACL that
//!   admits the service's user and no one else (`D:P(A;;GA;;;<user SID>)`: not SYSTEM, not Administrators, not the
//!   everyone-read of the default). A client checks that the process serving the pipe runs as its own user before it
//!   sends anything ([`connect`]): the pipe's owner check, as the socket's owner is checked on Unix.
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

    use std::os::windows::io::AsRawHandle;

    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::windows::named_pipe::{
        ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
    };
    use windows_sys::Win32::Foundation::{CloseHandle, ERROR_PIPE_BUSY, HANDLE, LocalFree};
    use windows_sys::Win32::Security::Authorization::{
        ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
        SDDL_REVISION_1,
    };
    use windows_sys::Win32::Security::{
        EqualSid, GetTokenInformation, PSECURITY_DESCRIPTOR, PSID, SECURITY_ATTRIBUTES,
        TOKEN_QUERY, TOKEN_USER, TokenUser,
    };
    use windows_sys::Win32::System::Pipes::GetNamedPipeServerProcessId;
    use windows_sys::Win32::System::Threading::{
        GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
    };

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

    /// Nothing to check by path on Windows: [`connect`] checks the user of the process serving the pipe.
    pub fn check_endpoint(_data_dir: &Path) -> Result<(), PathError> {
        Ok(())
    }

    /// Connect to the service of `data_dir`, waiting a little while every instance of its pipe is taken. A pipe
    /// served by a process of another user is refused (`PermissionDenied`) before a byte is sent: that user could
    /// have made the name first to read our requests, cookies included.
    pub async fn connect(data_dir: &Path) -> io::Result<Stream> {
        let name = endpoint(data_dir);
        let mut tries = 0;
        loop {
            match ClientOptions::new().open(&name) {
                Ok(client) => {
                    check_server_user(&client)?;
                    return Ok(Stream::Client(client));
                }
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
        security: Descriptor,
    }

    impl Listener {
        /// Create the first instance of the pipe of `data_dir`; fails when the name exists already (another service,
        /// or someone squatting on it).
        pub fn bind(data_dir: &Path) -> io::Result<Listener> {
            let name = endpoint(data_dir);
            let security = Descriptor::user_only()?;
            let next = security.create(&name, true)?;
            Ok(Listener {
                name,
                next,
                security,
            })
        }

        /// The next client; a new instance takes its place for the one after.
        pub async fn accept(&mut self) -> io::Result<Stream> {
            self.next.connect().await?;
            let fresh = self.security.create(&self.name, false)?;
            Ok(Stream::Server(std::mem::replace(&mut self.next, fresh)))
        }

        /// Stop listening: the pipe is gone with its last instance.
        pub fn close(self) {}
    }

    /// A security descriptor from `ConvertStringSecurityDescriptorToSecurityDescriptorW`, freed on drop.
    struct Descriptor(PSECURITY_DESCRIPTOR);

    // SAFETY: the descriptor is written once when made and only read afterwards (by `CreateNamedPipeW`, which copies
    // it), so it may move to, and be read from, any thread.
    #[allow(unsafe_code)]
    unsafe impl Send for Descriptor {}
    #[allow(unsafe_code)]
    unsafe impl Sync for Descriptor {}

    impl Descriptor {
        /// A protected DACL with one entry: full access for this process's user.
        fn user_only() -> io::Result<Descriptor> {
            // SAFETY: the pseudo-handle of this process needs no closing.
            #[allow(unsafe_code)]
            let me = UserSid::of_process(unsafe { GetCurrentProcess() })?;
            let sddl: Vec<u16> = format!("D:P(A;;GA;;;{})", me.to_string()?)
                .encode_utf16()
                .chain([0])
                .collect();
            let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
            // SAFETY: `sddl` is NUL-terminated; on success `descriptor` is a LocalAlloc'd descriptor we own.
            #[allow(unsafe_code)]
            let made = unsafe {
                ConvertStringSecurityDescriptorToSecurityDescriptorW(
                    sddl.as_ptr(),
                    SDDL_REVISION_1,
                    &mut descriptor,
                    std::ptr::null_mut(),
                )
            };
            if made == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Descriptor(descriptor))
        }

        /// An instance of the pipe `name` under this descriptor, refusing remote clients; `first` fails when the
        /// name exists already.
        fn create(&self, name: &Path, first: bool) -> io::Result<NamedPipeServer> {
            let mut attributes = SECURITY_ATTRIBUTES {
                nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
                lpSecurityDescriptor: self.0,
                bInheritHandle: 0,
            };
            // SAFETY: `attributes` is a valid SECURITY_ATTRIBUTES whose descriptor lives as long as `self`, which
            // outlives the call (the pipe keeps its own copy).
            #[allow(unsafe_code)]
            unsafe {
                ServerOptions::new()
                    .first_pipe_instance(first)
                    .reject_remote_clients(true)
                    .create_with_security_attributes_raw(
                        name,
                        (&raw mut attributes).cast::<std::ffi::c_void>(),
                    )
            }
        }
    }

    impl Drop for Descriptor {
        fn drop(&mut self) {
            // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW with LocalAlloc, freed once.
            #[allow(unsafe_code)]
            unsafe {
                LocalFree(self.0);
            }
        }
    }

    /// A handle closed on drop.
    struct OwnedHandle(HANDLE);

    impl Drop for OwnedHandle {
        fn drop(&mut self) {
            // SAFETY: a handle we opened and close once.
            #[allow(unsafe_code)]
            unsafe {
                CloseHandle(self.0);
            }
        }
    }

    /// The user of a process: its token's `TOKEN_USER`, kept in an 8-byte aligned buffer.
    struct UserSid(Vec<u64>);

    impl UserSid {
        fn of_process(process: HANDLE) -> io::Result<UserSid> {
            let mut token: HANDLE = std::ptr::null_mut();
            // SAFETY: `token` receives a handle we own (closed by OwnedHandle).
            #[allow(unsafe_code)]
            if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
                return Err(io::Error::last_os_error());
            }
            let token = OwnedHandle(token);
            let mut len = 0u32;
            // SAFETY: a size query (no buffer); it fails with the needed length in `len`.
            #[allow(unsafe_code)]
            unsafe {
                GetTokenInformation(token.0, TokenUser, std::ptr::null_mut(), 0, &mut len);
            }
            if (len as usize) < size_of::<TOKEN_USER>() {
                return Err(io::Error::last_os_error());
            }
            let mut buffer = vec![0u64; (len as usize).div_ceil(8)];
            // SAFETY: `buffer` holds at least `len` bytes, aligned for TOKEN_USER.
            #[allow(unsafe_code)]
            let ok = unsafe {
                GetTokenInformation(
                    token.0,
                    TokenUser,
                    buffer.as_mut_ptr().cast(),
                    len,
                    &mut len,
                )
            };
            if ok == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(UserSid(buffer))
        }

        fn sid(&self) -> PSID {
            // SAFETY: the buffer holds the TOKEN_USER GetTokenInformation wrote; its SID points into the buffer.
            #[allow(unsafe_code)]
            unsafe {
                (*self.0.as_ptr().cast::<TOKEN_USER>()).User.Sid
            }
        }

        /// The SID as text (`S-1-5-21-...`), for SDDL.
        fn to_string(&self) -> io::Result<String> {
            let mut text: *mut u16 = std::ptr::null_mut();
            // SAFETY: on success `text` is a NUL-terminated LocalAlloc'd string we read, then free once.
            #[allow(unsafe_code)]
            unsafe {
                if ConvertSidToStringSidW(self.sid(), &mut text) == 0 {
                    return Err(io::Error::last_os_error());
                }
                let len = (0..).take_while(|&i| *text.add(i) != 0).count();
                let sid = String::from_utf16_lossy(std::slice::from_raw_parts(text, len));
                LocalFree(text.cast());
                Ok(sid)
            }
        }
    }

    /// Refuse a pipe whose server process runs as another user.
    fn check_server_user(client: &NamedPipeClient) -> io::Result<()> {
        let mut pid = 0u32;
        // SAFETY: the pipe's handle is open for the duration of the call.
        #[allow(unsafe_code)]
        if unsafe { GetNamedPipeServerProcessId(client.as_raw_handle(), &mut pid) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a query-only handle we close (OwnedHandle); null on failure.
        #[allow(unsafe_code)]
        let server = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
        if server.is_null() {
            return Err(io::Error::last_os_error());
        }
        let server = OwnedHandle(server);
        let theirs = UserSid::of_process(server.0)?;
        // SAFETY: as in `Descriptor::user_only`.
        #[allow(unsafe_code)]
        let ours = UserSid::of_process(unsafe { GetCurrentProcess() })?;
        // SAFETY: both SIDs point into buffers alive for the call.
        #[allow(unsafe_code)]
        let same = unsafe { EqualSid(ours.sid(), theirs.sid()) } != 0;
        if same {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the pipe is served by process {pid}, which runs as another user ({}): refusing it",
                    theirs.to_string().unwrap_or_default()
                ),
            ))
        }
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

    #[cfg(test)]
    mod tests {
        use std::os::windows::io::AsRawHandle;

        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use windows_sys::Win32::Security::Authorization::{
            ConvertSecurityDescriptorToStringSecurityDescriptorW, GetSecurityInfo, SDDL_REVISION_1,
            SE_KERNEL_OBJECT,
        };
        use windows_sys::Win32::Security::DACL_SECURITY_INFORMATION;

        use super::*;

        /// The pipe's DACL as SDDL text, read through a client's handle.
        #[allow(unsafe_code)]
        fn dacl_of(stream: &Stream) -> String {
            let Stream::Client(client) = stream else {
                panic!("a client stream")
            };
            let mut descriptor = std::ptr::null_mut();
            let mut text: *mut u16 = std::ptr::null_mut();
            // SAFETY: the handle is open; both out-pointers receive LocalAlloc'd memory, freed with the process (a test).
            unsafe {
                let got = GetSecurityInfo(
                    client.as_raw_handle(),
                    SE_KERNEL_OBJECT,
                    DACL_SECURITY_INFORMATION,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    &mut descriptor,
                );
                assert_eq!(got, 0, "GetSecurityInfo");
                let ok = ConvertSecurityDescriptorToStringSecurityDescriptorW(
                    descriptor,
                    SDDL_REVISION_1,
                    DACL_SECURITY_INFORMATION,
                    &mut text,
                    std::ptr::null_mut(),
                );
                assert_ne!(
                    ok, 0,
                    "ConvertSecurityDescriptorToStringSecurityDescriptorW"
                );
                let len = (0..).take_while(|&i| *text.add(i) != 0).count();
                String::from_utf16_lossy(std::slice::from_raw_parts(text, len))
            }
        }

        /// A client reaches the service of its own user (whose process it checked) and bytes go both ways; the pipe's
        /// DACL is protected and has one entry, for that user.
        #[tokio::test]
        async fn the_pipe_admits_its_users_clients_only() {
            let dir = tempfile::tempdir().unwrap();
            let mut listener = Listener::bind(dir.path()).unwrap();
            let server = tokio::spawn(async move {
                let mut stream = listener.accept().await.unwrap();
                let mut buf = [0; 4];
                stream.read_exact(&mut buf).await.unwrap();
                stream.write_all(b"pong").await.unwrap();
                buf
            });
            let mut client = connect(dir.path()).await.unwrap();
            // SAFETY: the pseudo-handle of this process.
            #[allow(unsafe_code)]
            let me = UserSid::of_process(unsafe { GetCurrentProcess() })
                .unwrap()
                .to_string()
                .unwrap();
            let dacl = dacl_of(&client);
            assert!(dacl.starts_with("D:P("), "not protected: {dacl}");
            assert_eq!(dacl.matches('(').count(), 1, "more than one entry: {dacl}");
            assert!(
                dacl.ends_with(&format!(";;;{me})")),
                "not the user's: {dacl}"
            );
            client.write_all(b"ping").await.unwrap();
            let mut answer = [0; 4];
            client.read_exact(&mut answer).await.unwrap();
            assert_eq!(&answer, b"pong");
            assert_eq!(&server.await.unwrap(), b"ping");
        }
    }
}
