//! The real `sdm` binary in a sandbox: a private `HOME`, `SDM_HOME` and download folder, a `sdm serve` that can be
//! started, killed and stopped, relays driven as a browser drives them, and the CLI. Shared by this crate's tests and
//! native-host's (`native-host/tests/host/`), which is why it runs the binary from outside and uses nothing of the
//! `sdm` library.
//!
//! ```text
//! let mut sdm = Sandbox::new();
//! sdm.start();                       // `sdm serve`, stderr into <data>/service.log, waits until it accepts
//! let mut relay = sdm.relay();       // as Chrome starts it
//! let reply = relay.call(json!({"id": 1, "cmd": "ping"}));
//! sdm.kill();                        // SIGKILL, as a crash would
//! ```
//!
//! Which binary: [`Sandbox::with_binary`] names it (native-host's tests pass the one cargo built for them);
//! [`Sandbox::new`] takes [`sdm_bin`]. Every process started here is killed when the sandbox is dropped, by its own
//! pid (and a service a relay or the CLI started, by the pid in its lock file, once checked to be an `sdm serve`).

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one step (a service start, a reply, a CLI run) may take before the test fails instead of hanging.
pub const STEP: Duration = Duration::from_secs(20);

/// The files the binary keeps in its data folder (`sdm::paths`), spelled out: the harness sees the binary from
/// outside, as a user does, so a renamed file is a change these tests should notice.
pub const SOCKET_FILE: &str = "sdm.sock";
pub const LOCK_FILE: &str = "service.lock";
pub const SERVICE_LOG: &str = "service.log";

/// The `sdm` binary under test: `$SDM_BIN` when set (`cargo xtask test` sets it to the release build), else the most
/// recently built of `target/debug/sdm` and `target/release/sdm` (`cargo test --workspace` builds the debug one;
/// `cargo test -p sdm-tests` alone does not, and would test whatever binary is there).
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
    bin: PathBuf,
    serve: Option<Guard>,
    /// Extra environment for every process started here.
    env: Vec<(String, String)>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

impl Sandbox {
    /// A sandbox for [`sdm_bin`].
    pub fn new() -> Sandbox {
        Sandbox::with_binary(sdm_bin())
    }

    /// A sandbox for the binary at `bin`, with its download folder and `HOME` made.
    pub fn with_binary(bin: impl Into<PathBuf>) -> Sandbox {
        let root = tempfile::Builder::new()
            .prefix("sdm-test")
            .tempdir()
            .expect("create a sandbox");
        std::fs::create_dir_all(root.path().join("downloads")).expect("create the download folder");
        std::fs::create_dir_all(root.path().join("home")).expect("create HOME");
        Sandbox {
            root,
            bin: bin.into(),
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
        self.data().join(SOCKET_FILE)
    }

    /// `sdm ARGS` in this sandbox: nothing of the real user's environment leaks in.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
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

    /// `sdm ARGS` started with its stdout piped to the test.
    fn spawn(&self, args: &[&str], stdin: Stdio, stderr: Stdio) -> Child {
        self.command(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start sdm {args:?}: {e}"))
    }

    /// Run `sdm ARGS` to the end (bounded by [`STEP`]).
    pub fn run(&self, args: &[&str]) -> Output {
        wait_output(self.spawn(args, Stdio::null(), Stdio::piped()), STEP)
    }

    /// Run `sdm ARGS`, expecting success, and return its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "sdm {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }

    /// Run `sdm ARGS`, expecting failure, and return its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "sdm {args:?} should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).expect("stderr is UTF-8")
    }

    /// Start `sdm serve` (its stderr appended to `service.log`, as when a relay starts it) and wait until it accepts.
    pub fn start(&mut self) {
        assert!(self.serve.is_none(), "the service is already running");
        std::fs::create_dir_all(self.data()).expect("create the data folder");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.data().join(SERVICE_LOG))
            .expect("open service.log");
        // Guarded from the start, so a service that never comes up is killed with the failing test.
        let mut serve = Guard(
            self.command(&["serve"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sdm serve"),
        );
        self.wait_until_serving(Some(&mut serve.0));
        self.serve = Some(serve);
    }

    /// Wait until a service accepts connections on the socket (a socket file alone may be a dead one's). `serve` is
    /// the service's process when the test started it: if it exits first, the test fails at once, with its log.
    pub fn wait_until_serving(&self, mut serve: Option<&mut Child>) {
        let deadline = Instant::now() + STEP;
        loop {
            let is_socket =
                std::fs::metadata(self.socket()).is_ok_and(|m| m.file_type().is_socket());
            if is_socket && std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            if let Some(child) = serve.as_deref_mut()
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
        drop(self.serve.take().expect("the service is running"));
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

    /// SIGTERM the service started by [`start`](Self::start) and wait for it to exit: a clean shutdown.
    pub fn stop(&mut self) {
        let Some(mut serve) = self.serve.take() else {
            return;
        };
        signal(serve.0.id(), "TERM");
        let deadline = Instant::now() + STEP;
        while serve.0.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "sdm serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The service's log so far.
    pub fn service_log(&self) -> String {
        std::fs::read_to_string(self.data().join(SERVICE_LOG)).unwrap_or_default()
    }

    /// The pid in the service's lock file, when it is a live `sdm serve` (the test, a relay or the CLI started it).
    pub fn service_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.data().join(LOCK_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_sdm_service(pid).then_some(pid)
    }

    /// Start a relay as Chrome starts it.
    pub fn relay(&self) -> Relay {
        self.relay_with(&[&format!("chrome-extension://{}/", protocol::EXTENSION_ID)])
    }

    /// Start a relay with these arguments (each browser passes its own).
    pub fn relay_with(&self, args: &[&str]) -> Relay {
        let mut child = self.spawn(args, Stdio::piped(), Stdio::null());
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
            child: Guard(child),
            stdin,
            frames: rx,
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        drop(self.serve.take());
        if let Some(pid) = self.service_pid() {
            signal(pid, "KILL");
            // Gone before the folder is removed under it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while is_sdm_service(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Send `sig` (`"TERM"`, `"KILL"`, ...) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// True while `pid` is a live (not zombie) `sdm serve`; checked so a reused pid is never signalled.
pub fn is_sdm_service(pid: u32) -> bool {
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
    // Read both pipes while the child runs: a child that writes more than a pipe holds would otherwise block on its
    // write and never exit.
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let status = exit_by(&mut child, limit);
    let collect = |reader: Option<std::thread::JoinHandle<Vec<u8>>>| {
        reader.map_or_else(Vec::new, |r| r.join().expect("pipe reader"))
    };
    let (stdout, stderr) = (collect(stdout), collect(stderr));
    let Some(status) = status else {
        panic!(
            "process did not finish in {limit:?}; stderr: {}",
            String::from_utf8_lossy(&stderr)
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Everything `pipe` gives until its end, read on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Wait for a child to exit, killing it (and failing, with its stderr when that was piped) at the deadline.
pub fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    if let Some(status) = exit_by(child, limit) {
        return status;
    }
    let mut stderr = String::new();
    if let Some(pipe) = &mut child.stderr {
        let _ = pipe.read_to_string(&mut stderr);
    }
    panic!("process did not finish in {limit:?}; stderr: {stderr}");
}

/// The child's exit status, or `None` once it was killed at the deadline.
fn exit_by(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child process killed when the test ends, however it ends.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A relay process driven as a browser drives it: frames in on stdin, frames out on stdout.
pub struct Relay {
    child: Guard,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<Vec<u8>>,
}

impl Relay {
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .expect("write to the relay");
    }

    pub fn send_body(&mut self, body: &[u8]) {
        self.send_raw(&protocol::codec::encode(body));
    }

    pub fn send(&mut self, request: Value) {
        self.send_body(request.to_string().as_bytes());
    }

    /// The next frame, which must come within [`STEP`] and be at most 1 MiB.
    pub fn recv_frame(&self) -> Vec<u8> {
        let frame = self
            .frames
            .recv_timeout(STEP)
            .expect("no frame from the relay in time");
        assert!(
            frame.len() <= protocol::MAX_OUTGOING_FRAME,
            "the relay sent a frame of {} bytes",
            frame.len()
        );
        frame
    }

    pub fn recv(&self) -> Value {
        serde_json::from_slice(&self.recv_frame()).expect("the relay sent JSON")
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

    /// The next event, skipping replies.
    pub fn event(&self) -> Value {
        loop {
            let v = self.recv();
            if v.get("event").is_some() {
                return v;
            }
        }
    }

    /// Send a request and return its reply, checking the id came back.
    pub fn call(&mut self, request: Value) -> Value {
        let id = request["id"].clone();
        self.send(request);
        let reply = self.reply();
        assert_eq!(reply["id"], id, "reply to another request: {reply}");
        reply
    }

    /// Close stdin (the browser let go) and wait for the relay to exit.
    pub fn close(mut self) -> ExitStatus {
        drop(self.stdin.take());
        wait_exit(&mut self.child.0, STEP)
    }

    /// Wait for the relay to exit by itself.
    pub fn wait(mut self) -> ExitStatus {
        wait_exit(&mut self.child.0, STEP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that writes more than a pipe holds (64 KiB on Linux) before it exits must not hang the harness.
    #[test]
    fn output_larger_than_a_pipe_is_collected() {
        let child = Command::new("head")
            .args(["-c", "1000000", "/dev/zero"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start head");
        let out = wait_output(child, STEP);
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), 1_000_000);
    }
}
