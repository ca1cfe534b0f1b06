//! SDM on Windows end to end, under wine: the CLI, the service over its named pipe, the relay, and the registration
//! in the registry. The Unix test harness (`sdm-tests`) drives sockets and signals, so this scenario is the Windows
//! CLI and host test.
//!
//! It runs the Windows `sdm.exe` in a fresh copy of the wine prefix (so every run starts with an empty registry and
//! leaves the shared prefix alone), with its data folder and the user's Downloads inside that copy, against an HTTP
//! server on 127.0.0.1 here (wine programs reach the host's loopback directly):
//!
//! 1. `sdm add URL`, `sdm wait`: the file arrives with the served bytes; `sdm ls` lists it.
//! 2. The relay as a browser starts it (`sdm.exe chrome-extension://<id>/`): framed `ping` and `list` answered.
//! 3. `sdm stop`, then `sdm status` says not running.
//! 4. `sdm install`: the binary copied to `%LOCALAPPDATA%\Programs\sdm`, Chrome's and Firefox's HKCU keys naming
//!    manifests that name that copy and SDM's extensions; Edge (not there) left alone; `sdm status` reports both.
//!    `sdm install --browser edge` adds Edge's key to the shared Chromium manifest; removing Chrome alone keeps it.
//! 5. `sdm uninstall`: keys, manifests and copy gone.
//!
//! Every step asserts, and a failure names the step.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::tools::{root, run};

/// The longest one command may take before the scenario gives up on it (a hung wine process must not hang CI).
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// The served file: a few segments' worth, not a multiple of anything.
const FILE_LEN: usize = 3 * 1024 * 1024 + 12_345;
const FILE_NAME: &str = "e2e.bin";
/// Where the scenario's data folder is, in Windows terms (inside the prefix copy's `drive_c`).
const SDM_HOME: &str = r"C:\sdm-e2e\home";

/// Run the scenario with `sdm_exe` (built for Windows), in a copy of `base_prefix`.
pub fn scenario(wine: &str, sdm_exe: &Path, base_prefix: &Path) -> Result<()> {
    let work = root().join("target").join("wine-e2e");
    let prefix = fresh_prefix(wine, base_prefix, &work)?;
    let user = prefix_user(&prefix)?;
    let profile = prefix.join("drive_c/users").join(&user);
    // The copy's Downloads is a link to the real user's; the scenario's downloads stay in the copy.
    let downloads = profile.join("Downloads");
    let _ = std::fs::remove_file(&downloads);
    std::fs::create_dir_all(&downloads)?;
    // Chrome and Firefox "have run" for this user (their profile folders exist); Edge has not.
    std::fs::create_dir_all(profile.join("AppData/Local/Google/Chrome/User Data"))?;
    std::fs::create_dir_all(profile.join("AppData/Roaming/Mozilla/Firefox"))?;

    let box_ = Wine {
        wine: wine.to_owned(),
        prefix: prefix.clone(),
        sdm: sdm_exe.to_path_buf(),
        logs: work.join("logs"),
    };
    std::fs::create_dir_all(&box_.logs)?;
    let result = steps(&box_, &prefix, &profile, &user);
    // Whatever happened: no service or wineserver of the copy is left running.
    let _ = box_.sdm("cleanup: sdm stop", &["stop"]);
    let _ = Command::new(wineserver(wine))
        .arg("-k")
        .env("WINEPREFIX", &prefix)
        .status();
    match result {
        Ok(()) => {
            std::fs::remove_dir_all(&work)?;
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "the wine scenario failed (its prefix copy and logs are in {})",
            work.display()
        ))),
    }
}

fn steps(w: &Wine, prefix: &Path, profile: &Path, user: &str) -> Result<()> {
    let ids = Ids::read()?;
    let body = file_bytes();
    let server = Server::start(body.clone())?;
    let url = format!("http://127.0.0.1:{}/{FILE_NAME}", server.port);

    // 1. A download through the service, over the named pipe.
    w.ok("sdm add", &["add", &url])?;
    w.ok("sdm wait", &["wait", "--timeout", "120"])?;
    let saved = profile.join("Downloads").join(FILE_NAME);
    let got = std::fs::read(&saved)
        .with_context(|| format!("sdm wait succeeded but {} is missing", saved.display()))?;
    ensure!(
        got == *body,
        "the downloaded file differs: {} bytes, sha256 {}; served {} bytes, sha256 {}",
        got.len(),
        hex(&Sha256::digest(&got)),
        body.len(),
        hex(&Sha256::digest(body.as_slice()))
    );
    let ls = w.ok("sdm ls", &["ls"])?;
    ensure!(
        ls.contains(FILE_NAME),
        "sdm ls does not list {FILE_NAME}:\n{ls}"
    );
    println!(
        "xtask: wine: downloaded {FILE_NAME} through the service ({FILE_LEN} bytes, same sha256)"
    );

    // 2. The relay, as a browser starts it.
    relay_round_trip(w, &ids)?;
    println!("xtask: wine: the relay answered ping and list");

    // 3. Stop.
    w.ok("sdm stop", &["stop"])?;
    let (status, out) = w.sdm("sdm status (stopped)", &["status"])?;
    ensure!(
        status.code() == Some(3),
        "sdm status after stop: expected exit 3 (not running), got {status}:\n{out}"
    );

    // 4. Install.
    for key in [CHROME_KEY, MOZILLA_KEY, EDGE_KEY] {
        ensure!(
            w.reg_default(key)?.is_none(),
            "the fresh prefix already has {key}"
        );
    }
    let out = w.ok("sdm install", &["install"])?;
    let installed = format!(r"C:\users\{user}\AppData\Local\Programs\sdm\sdm.exe");
    let copy = std::fs::read(win_to_unix(prefix, &installed))
        .with_context(|| format!("sdm install did not copy the binary to {installed}:\n{out}"))?;
    ensure!(
        copy == std::fs::read(&w.sdm)?,
        "{installed} is not a copy of sdm.exe"
    );
    let chrome = w
        .reg_default(CHROME_KEY)?
        .with_context(|| format!("sdm install did not write {CHROME_KEY}:\n{out}"))?;
    let manifest = read_json(&win_to_unix(prefix, &chrome))?;
    check_manifest(&manifest, &installed, "Chrome")?;
    ensure!(
        manifest["allowed_origins"]
            .as_array()
            .is_some_and(|o| o.contains(&json!(format!("chrome-extension://{}/", ids.extension)))),
        "Chrome's manifest does not allow SDM's extension: {manifest}"
    );
    let mozilla = w
        .reg_default(MOZILLA_KEY)?
        .with_context(|| format!("sdm install did not write {MOZILLA_KEY}:\n{out}"))?;
    let manifest = read_json(&win_to_unix(prefix, &mozilla))?;
    check_manifest(&manifest, &installed, "Firefox")?;
    ensure!(
        manifest["allowed_extensions"] == json!([ids.gecko]),
        "Firefox's manifest does not allow exactly SDM's add-on: {manifest}"
    );
    ensure!(
        w.reg_default(EDGE_KEY)?.is_none(),
        "sdm install registered with Edge, which this user has never run"
    );
    let (_, status) = w.sdm("sdm status (installed)", &["status"])?;
    ensure!(
        status.contains("registered with: chrome, firefox"),
        "sdm status does not report the registrations:\n{status}"
    );
    println!("xtask: wine: sdm install wrote the HKCU keys and manifests for Chrome and Firefox");

    // Chromium browsers share one manifest file on Windows: Edge added later gets its own key to it, and removing
    // Chrome alone leaves the file (and Edge's key) in place.
    let out = w.ok(
        "sdm install --browser edge",
        &["install", "--browser", "edge"],
    )?;
    ensure!(
        w.reg_default(EDGE_KEY)?.as_deref() == Some(chrome.as_str()),
        "sdm install --browser edge did not point {EDGE_KEY} at {chrome}:\n{out}"
    );
    let out = w.ok(
        "sdm install --uninstall --browser chrome",
        &["install", "--uninstall", "--browser", "chrome"],
    )?;
    ensure!(
        w.reg_default(CHROME_KEY)?.is_none(),
        "removing Chrome left {CHROME_KEY}:\n{out}"
    );
    ensure!(
        w.reg_default(EDGE_KEY)?.is_some() && win_to_unix(prefix, &chrome).is_file(),
        "removing Chrome took Edge's registration with it:\n{out}"
    );

    // 5. Uninstall.
    let out = w.ok("sdm uninstall", &["uninstall"])?;
    for (key, file) in [(EDGE_KEY, &chrome), (MOZILLA_KEY, &mozilla)] {
        ensure!(
            w.reg_default(key)?.is_none(),
            "sdm uninstall left {key}:\n{out}"
        );
        ensure!(
            !win_to_unix(prefix, file).exists(),
            "sdm uninstall left {file}:\n{out}"
        );
    }
    ensure!(
        !win_to_unix(prefix, &installed).exists(),
        "sdm uninstall left {installed}:\n{out}"
    );
    println!("xtask: wine: sdm uninstall removed the keys, the manifests and the copy");
    Ok(())
}

const CHROME_KEY: &str = r"HKCU\Software\Google\Chrome\NativeMessagingHosts\com.sdm.host";
const MOZILLA_KEY: &str = r"HKCU\Software\Mozilla\NativeMessagingHosts\com.sdm.host";
const EDGE_KEY: &str = r"HKCU\Software\Microsoft\Edge\NativeMessagingHosts\com.sdm.host";

fn check_manifest(manifest: &Value, installed: &str, browser: &str) -> Result<()> {
    ensure!(
        manifest["name"] == "com.sdm.host" && manifest["type"] == "stdio",
        "{browser}'s manifest is not SDM's: {manifest}"
    );
    ensure!(
        manifest["path"] == installed,
        "{browser}'s manifest names {} instead of {installed}",
        manifest["path"]
    );
    Ok(())
}

/// The relay started as Chrome starts it, two framed requests on its stdin, their answers on its stdout.
fn relay_round_trip(w: &Wine, ids: &Ids) -> Result<()> {
    let origin = format!("chrome-extension://{}/", ids.extension);
    let mut child = w
        .command(&[&origin])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(w.logs.join("relay.stderr"))?)
        .spawn()
        .context("cannot start the relay under wine")?;
    let mut stdin = child.stdin.take().context("relay stdin")?;
    let stdout = child.stdout.take().context("relay stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = stdout;
        while let Ok(frame) = read_frame(&mut stdout) {
            if tx.send(frame).is_err() {
                break;
            }
        }
    });
    let mut call = |id: u64, cmd: &str| -> Result<Value> {
        let body = serde_json::to_vec(&json!({"id": id, "cmd": cmd}))?;
        stdin.write_all(&(body.len() as u32).to_ne_bytes())?;
        stdin.write_all(&body)?;
        stdin.flush()?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = rx
                .recv_timeout(left)
                .map_err(|_| anyhow::anyhow!("the relay did not answer `{cmd}`"))?;
            // Events come between replies; the reply carries the request's id.
            if frame["id"] == id {
                return Ok(frame);
            }
        }
    };
    let outcome = (|| {
        let ping = call(1, "ping")?;
        ensure!(
            ping["ok"] == true && ping["result"]["version"].is_string(),
            "the relay's ping reply: {ping}"
        );
        let list = call(2, "list")?;
        ensure!(
            list["ok"] == true && list["result"]["total"].is_u64(),
            "the relay's list reply: {list}"
        );
        Ok(())
    })();
    drop(stdin);
    let status = wait_timeout(&mut child, "the relay")?;
    outcome?;
    ensure!(
        status.success(),
        "the relay exited with {status} when its stdin closed"
    );
    Ok(())
}

/// One native-messaging frame: a 32-bit length in the machine's order, then JSON.
fn read_frame(r: &mut impl Read) -> Result<Value> {
    let mut len = [0; 4];
    r.read_exact(&mut len)?;
    let mut body = vec![0; u32::from_ne_bytes(len) as usize];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

/// Running programs in the prefix copy.
struct Wine {
    wine: String,
    prefix: PathBuf,
    sdm: PathBuf,
    logs: PathBuf,
}

impl Wine {
    fn base(&self, program: &Path) -> Command {
        let mut cmd = Command::new(&self.wine);
        cmd.arg(program)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            .env("SDM_HOME", SDM_HOME)
            .env("RUST_BACKTRACE", "1")
            .env_remove("XDG_DOWNLOAD_DIR")
            .env_remove("SDM_BIN");
        cmd
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.base(&self.sdm);
        cmd.args(args);
        cmd
    }

    /// `sdm.exe ARGS`: its exit status and its output (stdout then stderr). Output goes to files, not pipes: the
    /// service a command starts must not hold our end of a pipe open.
    fn sdm(&self, step: &str, args: &[&str]) -> Result<(ExitStatus, String)> {
        let slug: String = step
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let out_path = self.logs.join(format!("{slug}.out"));
        let err_path = self.logs.join(format!("{slug}.err"));
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?)
            .spawn()
            .with_context(|| format!("{step}: cannot start wine"))?;
        let status = wait_timeout(&mut child, step)?;
        let out = std::fs::read_to_string(&out_path).unwrap_or_default()
            + &std::fs::read_to_string(&err_path).unwrap_or_default();
        Ok((status, out))
    }

    /// `sdm.exe ARGS`, which must succeed; its output.
    fn ok(&self, step: &str, args: &[&str]) -> Result<String> {
        let (status, out) = self.sdm(step, args)?;
        if !status.success() {
            bail!("{step} failed ({status}):\n{out}");
        }
        Ok(out)
    }

    /// The default value of registry key `key`, or `None` when the key does not exist (`reg query` fails).
    fn reg_default(&self, key: &str) -> Result<Option<String>> {
        let output = self
            .base(Path::new("reg"))
            .args(["query", key, "/ve"])
            .output()
            .context("cannot run wine's reg")?;
        if !output.status.success() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&output.stdout);
        // `    (Default)    REG_SZ    C:\...`
        let value = text
            .lines()
            .find_map(|l| l.split_once("REG_SZ").map(|(_, v)| v.trim().to_owned()))
            .with_context(|| format!("{key} has no string default value:\n{text}"))?;
        Ok(Some(value))
    }
}

/// Wait for `child`, killing it and failing after [`STEP_TIMEOUT`].
fn wait_timeout(child: &mut Child, step: &str) -> Result<ExitStatus> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{step} did not finish within {STEP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh copy of `base` in `work/prefix`, after the base prefix's wineserver has exited (so its registry files
/// are whole).
fn fresh_prefix(wine: &str, base: &Path, work: &Path) -> Result<PathBuf> {
    let _ = Command::new(wineserver(wine))
        .arg("-w")
        .env("WINEPREFIX", base)
        .status();
    if work.exists() {
        std::fs::remove_dir_all(work)?;
    }
    std::fs::create_dir_all(work)?;
    let prefix = work.join("prefix");
    run(Command::new("cp").arg("-a").arg(base).arg(&prefix))?;
    Ok(prefix)
}

/// `wineserver` beside the loader.
fn wineserver(wine: &str) -> PathBuf {
    Path::new(wine).with_file_name("wineserver")
}

/// The prefix's user (its folder under `drive_c/users`, besides `Public`).
fn prefix_user(prefix: &Path) -> Result<String> {
    std::fs::read_dir(prefix.join("drive_c/users"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n != "Public")
        .context("the wine prefix has no user folder")
}

/// `C:\a\b` as a path inside the prefix's `drive_c`.
fn win_to_unix(prefix: &Path, path: &str) -> PathBuf {
    let rest = path
        .strip_prefix("C:\\")
        .or_else(|| path.strip_prefix("c:\\"))
        .unwrap_or(path);
    rest.split('\\')
        .fold(prefix.join("drive_c"), |p, part| p.join(part))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the manifest {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SDM's extension ids, read from `protocol` (the one place they are defined).
struct Ids {
    extension: String,
    gecko: String,
}

impl Ids {
    fn read() -> Result<Ids> {
        let text = std::fs::read_to_string(root().join("protocol/src/lib.rs"))?;
        let constant = |name: &str| -> Result<String> {
            let head = format!("pub const {name}: &str = \"");
            text.lines()
                .find_map(|l| l.trim().strip_prefix(&head)?.split('"').next())
                .map(str::to_owned)
                .with_context(|| format!("protocol/src/lib.rs has no `{head}...`"))
        };
        Ok(Ids {
            extension: constant("EXTENSION_ID")?,
            gecko: constant("GECKO_ID")?,
        })
    }
}

/// The served bytes: a fixed pseudo-random sequence (xorshift), so a misplaced segment shows.
fn file_bytes() -> Arc<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes = (0..FILE_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    Arc::new(bytes)
}

/// A small HTTP/1.1 server for one file: HEAD, GET and single ranges, one request per connection.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(body: Arc<Vec<u8>>) -> Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let body = body.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &body);
                });
            }
        });
        Ok(Server { port, stop })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, body: &[u8]) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = parse_range(value.trim(), body.len());
        }
    }
    let head_only = request.starts_with("HEAD ");
    let path_ok = request
        .split_whitespace()
        .nth(1)
        .is_some_and(|p| p == format!("/{FILE_NAME}"));
    let mut conn = conn;
    if !path_ok {
        return conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let total = body.len();
    let (status, start, end) = match range {
        Some((start, end)) => ("206 Partial Content", start, end),
        None => ("200 OK", 0, total - 1),
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n\
         Content-Type: application/octet-stream\r\nConnection: close\r\n",
        end + 1 - start
    );
    if range.is_some() {
        head.push_str(&format!("Content-Range: bytes {start}-{end}/{total}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    if !head_only {
        conn.write_all(&body[start..=end])?;
    }
    conn.flush()
}

/// `bytes=a-b` or `bytes=a-`, within a file of `len` bytes.
fn parse_range(value: &str, len: usize) -> Option<(usize, usize)> {
    let (a, b) = value.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = a.trim().parse().ok()?;
    let end = match b.trim() {
        "" => len - 1,
        b => b.parse::<usize>().ok()?.min(len - 1),
    };
    (start <= end).then_some((start, end))
}
