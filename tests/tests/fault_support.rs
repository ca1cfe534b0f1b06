//! The real `sdm` binary in a sandbox: a private `HOME`, `SDM_HOME` and download folder, a `sdm serve` that can be
//! killed and started again, relays driven as a browser drives them, and the CLI.
//!
//! ```text
//! let mut sdm = Sandbox::new();
//! sdm.start();                       // `sdm serve`, stderr into <data>/service.log, waits for the socket
//! let mut client = sdm.client().await;
//! sdm.kill();                        // SIGKILL, as a crash would
//! ```
//!
//! Which binary: `$SDM_BIN` when set (`cargo xtask test` sets it to the release build), else the most recently built
//! of `target/debug/sdm` and `target/release/sdm` (`cargo test --workspace` builds the debug one; `cargo test -p
//! sdm-tests` alone does not, and would test whatever binary is there). Every process started here is killed when the sandbox is dropped,
//! by its own pid (and a service a relay started, by the pid in its lock file, once checked to be our `sdm serve`).

use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one step (a service start, a reply, a CLI run) may take before the test fails instead of hanging.
pub const STEP: Duration = Duration::from_secs(20);

/// The `sdm` binary under test.
pub fn sdm_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SDM_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let newest = ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("sdm"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max();
    match newest {
        Some((_, path)) => path,
        None => panic!(
            "no sdm binary under {}: run `cargo build -p sdm` or set SDM_BIN",
            target.display()
        ),
    }
}

/// A private environment for the real binary. Dropping it kills every process it started.
pub struct Sandbox {
    pub root: tempfile::TempDir,
    serve: Option<Child>,
    /// Extra environment for every process started here.
    env: Vec<(String, String)>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let root = tempfile::Builder::new()
            .prefix("sdm-fault")
            .tempdir()
            .expect("create a sandbox");
        std::fs::create_dir_all(root.path().join("downloads")).expect("create the download folder");
        std::fs::create_dir_all(root.path().join("home")).expect("create HOME");
        Sandbox {
            root,
            serve: None,
            env: Vec::new(),
        }
    }

    /// Set an environment variable for every process started from now on.
    pub fn env(&mut self, name: &str, value: &str) {
        self.env.push((name.into(), value.into()));
    }

    pub fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn downloads(&self) -> PathBuf {
        self.root.path().join("downloads")
    }

    pub fn socket(&self) -> PathBuf {
        self.data().join("sdm.sock")
    }

    /// `sdm ARGS` in this sandbox: nothing of the real user's environment leaks in.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(sdm_bin());
        cmd.args(args)
            .env("HOME", self.home())
            .env("SDM_HOME", self.data())
            .env("XDG_DOWNLOAD_DIR", self.downloads())
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("SDM_LOG")
            .current_dir(self.root.path());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Start `sdm serve` (its stderr appended to `service.log`, as when a relay starts it) and wait for its socket.
    pub fn start(&mut self) {
        assert!(self.serve.is_none(), "the service is already running");
        std::fs::create_dir_all(self.data()).expect("create the data folder");
        let log = sdm::client::open_log(&self.data().join(sdm::paths::SERVICE_LOG))
            .expect("open service.log");
        let child = self
            .command(&["serve"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sdm serve");
        self.serve = Some(child);
        self.wait_until_serving();
    }

    /// Wait until the service accepts connections on its socket (a socket file alone may be a dead one's).
    pub fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + STEP;
        loop {
            let is_socket =
                std::fs::metadata(self.socket()).is_ok_and(|m| m.file_type().is_socket());
            if is_socket && std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            if let Some(child) = &mut self.serve
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "sdm serve exited ({status}) before serving; service.log:\n{}",
                    self.service_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the service never opened its socket; service.log:\n{}",
                self.service_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL the service started by [`start`](Self::start) and reap it: a crash, with no chance to save anything.
    pub fn kill(&mut self) {
        let mut child = self.serve.take().expect("the service is running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL the service the moment `path` exists (polling without pause, for at most `limit`), or at `limit` if
    /// it never appears. Returns whether `path` was seen: used to kill while a state file is being written.
    pub fn kill_when_exists(&mut self, path: &Path, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut seen = false;
        while Instant::now() < deadline {
            if path.exists() {
                seen = true;
                break;
            }
            std::hint::spin_loop();
        }
        self.kill();
        seen
    }

    /// SIGTERM the service and wait for it to exit: a clean shutdown.
    pub fn stop(&mut self) {
        let Some(mut child) = self.serve.take() else {
            return;
        };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + STEP;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sdm serve did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`start`](Self::start) the service (from async code: the wait blocks in place) and connect to it.
    pub async fn start_and_connect(&mut self) -> sdm::client::Client {
        tokio::task::block_in_place(|| self.start());
        self.client().await
    }

    /// A request/reply connection to the running service.
    pub async fn client(&self) -> sdm::client::Client {
        let stream = tokio::net::UnixStream::connect(self.socket())
            .await
            .expect("connect to the service's socket");
        sdm::client::Client::new(stream)
    }

    /// The service's log so far.
    pub fn service_log(&self) -> String {
        std::fs::read_to_string(self.data().join(sdm::paths::SERVICE_LOG)).unwrap_or_default()
    }

    /// Run `sdm ARGS` to the end (bounded by [`STEP`]).
    pub fn run(&self, args: &[&str]) -> Output {
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sdm");
        wait_output(child, STEP)
    }

    /// Start a relay as Chrome starts it.
    pub fn relay(&self) -> Relay {
        let mut child = self
            .command(&[&format!("chrome-extension://{}/", protocol::EXTENSION_ID)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the relay");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("relay stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            loop {
                let mut len = [0u8; 4];
                if stdout.read_exact(&mut len).is_err() {
                    return;
                }
                let mut body = vec![0u8; u32::from_ne_bytes(len) as usize];
                if stdout.read_exact(&mut body).is_err() || tx.send(body).is_err() {
                    return;
                }
            }
        });
        Relay {
            child,
            stdin,
            frames: rx,
        }
    }

    /// The pid in `service.lock`, when it is a live `sdm serve` (a relay may have started it).
    fn locked_service_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.data().join(sdm::paths::LOCK_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_sdm_service(pid).then_some(pid)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut child) = self.serve.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = self.locked_service_pid() {
            signal(pid, "KILL");
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// True while `pid` is a live (not zombie) `sdm serve`; checked so a reused pid is never signalled.
fn is_sdm_service(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let is_sdm =
        args.first().is_some_and(|a| a.ends_with(b"sdm")) && args.get(1) == Some(&&b"serve"[..]);
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    });
    is_sdm && !zombie
}

/// Wait for a child to exit (killing it and failing at the deadline) and collect its output.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("poll child").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "process did not finish in {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A relay process driven as a browser drives it: frames in on stdin, frames out on stdout.
pub struct Relay {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<Vec<u8>>,
}

impl Relay {
    pub fn send(&mut self, request: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(&protocol::codec::encode(request.to_string().as_bytes()))
            .and_then(|()| stdin.flush())
            .expect("write to the relay");
    }

    /// The next frame, which must come within [`STEP`] and be at most 1 MiB.
    pub fn recv(&self) -> Value {
        let frame = self
            .frames
            .recv_timeout(STEP)
            .expect("no frame from the relay in time");
        assert!(
            frame.len() <= protocol::MAX_OUTGOING_FRAME,
            "the relay sent a frame of {} bytes",
            frame.len()
        );
        serde_json::from_slice(&frame).expect("the relay sent JSON")
    }

    /// The next reply, skipping events.
    pub fn reply(&self) -> Value {
        loop {
            let v = self.recv();
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    /// Send a request and return its reply, checking the id came back.
    pub fn call(&mut self, request: Value) -> Value {
        let id = request["id"].clone();
        self.send(&request);
        let reply = self.reply();
        assert_eq!(reply["id"], id, "reply to another request: {reply}");
        reply
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One download as the service reports it.
pub async fn info(
    client: &mut sdm::client::Client,
    id: protocol::DownloadId,
) -> protocol::DownloadInfo {
    list(client)
        .await
        .into_iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("download {id} is not in the list"))
}

/// Every download the service holds.
pub async fn list(client: &mut sdm::client::Client) -> Vec<protocol::DownloadInfo> {
    let page: protocol::ListResult = client
        .call(protocol::Command::List(protocol::PageRequest {
            offset: 0,
            limit: Some(protocol::MAX_PAGE),
        }))
        .await
        .expect("list");
    page.downloads
}

/// Add a download and return its id.
pub async fn add(
    client: &mut sdm::client::Client,
    request: protocol::AddRequest,
) -> protocol::DownloadId {
    let added: protocol::AddResult = client
        .call(protocol::Command::Add(request))
        .await
        .expect("add is accepted");
    added.id
}

/// Add a download of `file` with `threads` connections (the service's default for `None`) and return its id.
pub async fn add_file(
    client: &mut sdm::client::Client,
    file: &sdm_tests::ServedFile,
    threads: Option<u32>,
) -> protocol::DownloadId {
    add(
        client,
        protocol::AddRequest {
            url: file.url().to_string(),
            threads,
            ..protocol::AddRequest::default()
        },
    )
    .await
}

/// Poll the service every 25 ms until download `id` satisfies `pred` (failing after `secs`), and return it.
pub async fn wait_info(
    client: &mut sdm::client::Client,
    id: protocol::DownloadId,
    secs: u64,
    what: &str,
    pred: impl Fn(&protocol::DownloadInfo) -> bool,
) -> protocol::DownloadInfo {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let d = info(client, id).await;
        if pred(&d) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "download {id} never reached `{what}` in {secs} s; last seen: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A small deterministic random number generator (xorshift64*), seeded and printed by each test so a failure can be
/// replayed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock, or from `SDM_FAULT_SEED` when set; the seed is printed.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("SDM_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: SDM_FAULT_SEED={seed}");
        Rng::seeded(seed)
    }

    pub fn seeded(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}
