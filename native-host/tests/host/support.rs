//! What the tests share: a sandboxed environment, a driver for a relay process, and a one-file HTTP server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any single step may take before the test fails instead of hanging.
pub const STEP: Duration = Duration::from_secs(15);

pub const SDM: &str = env!("CARGO_BIN_EXE_sdm");

/// A private HOME and SDM_HOME. Dropping it stops the service that ran there.
pub struct Sandbox {
    pub root: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            root: tempfile::Builder::new().prefix("sdm").tempdir().unwrap(),
        }
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
        let mut cmd = Command::new(SDM);
        cmd.args(args)
            .env("HOME", self.home())
            .env("SDM_HOME", self.data())
            .env("XDG_DOWNLOAD_DIR", self.downloads())
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("SDM_LOG")
            .current_dir(self.root.path());
        cmd
    }

    /// Run `sdm ARGS` to the end (bounded by [`STEP`]).
    pub fn run(&self, args: &[&str]) -> Output {
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(child, STEP)
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
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run `sdm ARGS`, expecting failure, and return its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "sdm {args:?} should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Start a relay as Chrome would.
    pub fn relay(&self) -> Relay {
        self.relay_with(&["chrome-extension://mamfelpfpaooapfmapiecgobfkfnmjnj/"])
    }

    /// Start a relay with these arguments (each browser passes its own).
    pub fn relay_with(&self, args: &[&str]) -> Relay {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            loop {
                let mut len = [0u8; 4];
                if stdout.read_exact(&mut len).is_err() {
                    return;
                }
                let mut body = vec![0u8; u32::from_ne_bytes(len) as usize];
                if stdout.read_exact(&mut body).is_err() {
                    return;
                }
                if tx.send(body).is_err() {
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

    /// The pid of the service running here, if one is.
    pub fn service_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.data().join("service.lock"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_sdm_service(pid).then_some(pid)
    }

    /// Wait until the service's socket exists.
    pub fn wait_for_socket(&self) {
        let deadline = Instant::now() + STEP;
        while !std::fs::metadata(self.socket()).is_ok_and(|m| m.file_type().is_socket()) {
            assert!(
                Instant::now() < deadline,
                "the service never opened its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(pid) = self.service_pid() {
            stop(pid);
        }
    }
}

/// True while `pid` is a live (not zombie) `sdm serve`; checked so a reused pid is never signalled.
pub fn is_sdm_service(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let is_sdm =
        args.first().is_some_and(|a| a.ends_with(b"sdm")) && args.get(1) == Some(&&b"serve"[..]);
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true);
    is_sdm && !zombie
}

/// SIGTERM, then SIGKILL if it has not gone within a few seconds.
pub fn stop(pid: u32) {
    signal(pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_sdm_service(pid) {
        if Instant::now() > deadline {
            signal(pid, "KILL");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Wait for a child to exit (killing it at the deadline) and collect its output.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "process did not finish in {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait for a child to exit, killing it (and failing) at the deadline.
pub fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
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

/// A relay process driven like a browser drives it.
pub struct Relay {
    pub child: Child,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<Vec<u8>>,
}

impl Relay {
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
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

    /// The next reply (skipping events).
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
        self.send(request);
        let reply = self.reply();
        assert_eq!(reply["id"], id, "reply to another request: {reply}");
        reply
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

    /// Close stdin (the browser let go) and wait for the relay to exit.
    pub fn close(mut self) -> ExitStatus {
        drop(self.stdin.take());
        wait_exit(&mut self.child, STEP)
    }

    /// Wait for the relay to exit by itself.
    pub fn wait(mut self) -> ExitStatus {
        wait_exit(&mut self.child, STEP)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Assert a reply is an error with this code and id.
pub fn assert_error(reply: &Value, id: Value, code: &str) {
    assert_eq!(reply["id"], id, "{reply}");
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], code, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{reply}"
    );
}

/// An HTTP/1.1 server on loopback that serves one body at every path (ignoring ranges: a 200 every time) until
/// dropped.
pub struct FileServer {
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FileServer {
    pub fn start(body: Vec<u8>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let body = std::sync::Arc::new(body);
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let body = body.clone();
                        std::thread::spawn(move || serve_one(stream, &body));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FileServer { addr, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn serve_one(mut stream: std::net::TcpStream, body: &[u8]) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let is_head = head.starts_with(b"HEAD ");
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !is_head {
        response.extend_from_slice(body);
    }
    let _ = stream.write_all(&response);
}

/// A path's permission bits.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}
