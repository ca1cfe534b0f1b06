//! The test bed: test files in tmpfs, our own nginx on 127.0.0.1, and (when root) a network namespace with a second
//! nginx in it, behind a link with 50 ms of delay each way and 0.1 % loss ([`super::wire`]). Dropping the [`Lab`]
//! kills every nginx and the link, deletes the namespace and removes the files, also when a scenario fails.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Mode, Options, find_program};
use crate::tools;

pub const MIB: u64 = 1024 * 1024;

/// Per-connection cap of the `/cap/` location (issue 4: 5 MiB/s).
pub const CONN_CAP: u64 = 5 * MIB;
/// Slow-tail scenario: the one slow range's rate, and every other range's.
pub const TAIL_SLOW: u64 = MIB;
pub const TAIL_FAST: u64 = 5 * MIB;
/// Latency scenario: the link's delay each way, and the share of packets it loses (per million, each way).
pub const WIRE_DELAY_MS: u64 = 50;
pub const WIRE_LOSS_PPM: u32 = 1000;
/// The send buffers of the server behind the wire: up to 64 MiB per connection.
pub const SERVER_WMEM: &str = "net.ipv4.tcp_wmem=4096 16384 67108864";

/// The loopback nginx's TLS listener.
#[derive(Clone, Debug)]
pub struct Tls {
    /// `https://127.0.0.1:PORT`.
    pub base: String,
    /// The CA that signed its certificate: what a client must trust.
    pub ca: PathBuf,
}

/// A served test file.
#[derive(Clone, Debug)]
pub struct TestFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

pub struct Lab {
    /// Everything lives below here: `www/` (served), `out/` (client outputs), `nginx*/` (prefixes), `home/`.
    pub dir: PathBuf,
    pub www: PathBuf,
    pub out: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `http://10.x.y.2:PORT` inside the namespace, once [`Lab::start_netns`] succeeded.
    pub ns_base: Option<String>,
    /// `https://127.0.0.1:PORT` (TLS 1.3, the same files) and the throwaway CA its certificate is signed by, once
    /// [`Lab::start_nginx`] made them (it needs openssl).
    pub tls: Option<Tls>,
    files: BTreeMap<String, TestFile>,
    nginx: Vec<Child>,
    netns: Option<String>,
    /// The process that is the namespace's link.
    wire: Option<Child>,
    nginx_bin: PathBuf,
    /// Range starts the slow-tail location serves slowly (the second of 8 equal segments of the tail's file).
    tail_starts: Vec<u64>,
    /// `--keep`: leave `dir` in place when dropped.
    keep: bool,
}

impl Lab {
    pub fn new(opts: &Options) -> Result<Lab> {
        let shm = Path::new("/dev/shm");
        let parent = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = parent.join(format!("sdm-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let www = dir.join("www");
        let out = dir.join("out");
        for d in [&www, &out] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let nginx_bin =
            find_program("nginx").context("nginx not found: apt-get install nginx-light")?;
        let lab = Lab {
            dir,
            www,
            out,
            base: String::new(),
            ns_base: None,
            tls: None,
            files: BTreeMap::new(),
            nginx: Vec::new(),
            netns: None,
            wire: None,
            nginx_bin,
            tail_starts: Vec::new(),
            keep: opts.keep,
        };
        println!("bench: lab in {} ({:?})", lab.dir.display(), opts.mode);
        Ok(lab)
    }

    /// Create `name` of `size` pseudo-random bytes (distinct per file, so a client cannot pass with another file's
    /// bytes) and record its sha256.
    pub fn add_file(&mut self, name: &str, size: u64) -> Result<TestFile> {
        if let Some(f) = self.files.get(name) {
            return Ok(f.clone());
        }
        let path = self.www.join(name);
        let mut w = std::io::BufWriter::with_capacity(
            4 * MIB as usize,
            fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?,
        );
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ size ^ (name.len() as u64) << 32;
        for b in name.bytes() {
            state = state.rotate_left(7) ^ u64::from(b);
        }
        let mut chunk = vec![0u8; MIB as usize];
        let mut left = size;
        while left > 0 {
            for word in chunk.chunks_exact_mut(8) {
                // xorshift64: fast, and good enough to make every block distinct.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            let n = left.min(MIB) as usize;
            w.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        w.flush()?;
        drop(w);
        let file = TestFile {
            name: name.to_owned(),
            size,
            sha256: sha256(&path)?,
        };
        self.files.insert(name.to_owned(), file.clone());
        Ok(file)
    }

    /// Serve the request for the second of 8 equal segments of `file` slowly at `/tail/` (call before
    /// [`Lab::start_nginx`]).
    pub fn slow_second_eighth(&mut self, file: &TestFile) {
        self.tail_starts.push(file.size / 8);
    }

    /// `count` names that all serve `target` (symlinks), for the queue scenario.
    pub fn add_links(
        &mut self,
        target: &TestFile,
        prefix: &str,
        count: usize,
    ) -> Result<Vec<TestFile>> {
        (0..count)
            .map(|i| {
                let name = format!("{prefix}{i:03}.bin");
                let link = self.www.join(&name);
                let _ = fs::remove_file(&link);
                std::os::unix::fs::symlink(&target.name, &link)?;
                Ok(TestFile {
                    name,
                    ..target.clone()
                })
            })
            .collect()
    }

    /// Start nginx on 127.0.0.1 (call after the files exist: the slow-tail map names their segment starts), with a
    /// TLS 1.3 listener beside the plain one when openssl can make it a certificate.
    pub fn start_nginx(&mut self) -> Result<()> {
        let port = free_port()?;
        let prefix = self.dir.join("nginx");
        let tls = match self.make_certificate() {
            Ok(files) => Some((free_port()?, files)),
            Err(e) => {
                println!("bench: no TLS listener: {e:#}");
                None
            }
        };
        let listener = tls
            .as_ref()
            .map(|(p, (cert, key, _))| (*p, cert.as_path(), key.as_path()));
        let conf = self.nginx_conf(&prefix, "127.0.0.1", port, CONN_CAP, listener)?;
        let child = self.spawn_nginx(&prefix, &conf, None)?;
        self.nginx.push(child);
        wait_listening(&format!("127.0.0.1:{port}"), &prefix, self.nginx.last_mut())?;
        self.base = format!("http://127.0.0.1:{port}");
        if let Some((tls_port, (_, _, ca))) = tls {
            wait_listening(
                &format!("127.0.0.1:{tls_port}"),
                &prefix,
                self.nginx.last_mut(),
            )?;
            self.tls = Some(Tls {
                base: format!("https://127.0.0.1:{tls_port}"),
                ca,
            });
        }
        Ok(())
    }

    /// A throwaway CA and a certificate for 127.0.0.1 signed by it (P-256, valid 2 days), in `tls/`: the leaf's
    /// path, its key's and the CA's. A self-signed leaf will not do: webpki refuses a CA certificate as a server's.
    fn make_certificate(&self) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let openssl = find_program("openssl").context("openssl not installed")?;
        let dir = self.dir.join("tls");
        fs::create_dir_all(&dir)?;
        let [ca, ca_key, cert, key, csr, ext] = [
            "ca.pem", "ca.key", "cert.pem", "key.pem", "leaf.csr", "ext.cnf",
        ]
        .map(|n| dir.join(n));
        fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        quiet(
            Command::new(&openssl)
                .args(["req", "-x509"])
                .args(ec)
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca)
                .args(["-days", "2", "-subj", "/CN=sdm bench CA"]),
        )?;
        quiet(
            Command::new(&openssl)
                .arg("req")
                .args(ec)
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&csr)
                .args(["-subj", "/CN=127.0.0.1"]),
        )?;
        quiet(
            Command::new(&openssl)
                .args(["x509", "-req", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .args(["-CAcreateserial", "-days", "2", "-extfile"])
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
        )?;
        Ok((cert, key, ca))
    }

    /// A namespace joined to this one by [`super::wire`] (a TUN device on each side, [`WIRE_DELAY_MS`] each way,
    /// [`WIRE_LOSS_PPM`] lost), with a second nginx inside. Needs root and `ip`.
    pub fn start_netns(&mut self) -> Result<()> {
        if !tools::is_root() {
            bail!("the namespace needs root");
        }
        let ip = find_program("ip").context("`ip` not found: apt-get install iproute2")?;
        let tag = std::process::id() % 100_000;
        let ns = format!("sdmbench{tag}");
        let (host_if, ns_if) = (format!("sdmw{tag}h"), format!("sdmw{tag}n"));
        let octet = 16 + tag % 200;
        let (host_addr, ns_addr) = (format!("10.231.{octet}.1"), format!("10.231.{octet}.2"));
        quiet(Command::new(&ip).args(["netns", "add", &ns]))?;
        self.netns = Some(ns.clone());
        let exe = std::env::current_exe().context("cannot find the xtask binary")?;
        let mut wire = Command::new(exe)
            .args(["__wire", &host_if, &ns_if])
            .arg(WIRE_DELAY_MS.to_string())
            .arg(WIRE_LOSS_PPM.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the wire")?;
        let mut ready = String::new();
        if let Some(out) = wire.stdout.take() {
            std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut ready)?;
        }
        self.wire = Some(wire);
        if ready.trim() != "ready" {
            bail!("the wire did not start (see its error above)");
        }
        let in_ns = ["netns", "exec", ns.as_str()];
        let ip_in_ns = |rest: &[&str]| -> Result<()> {
            quiet(Command::new(&ip).args(in_ns).arg(&ip).args(rest))
        };
        quiet(Command::new(&ip).args(["link", "set", &ns_if, "netns", &ns]))?;
        quiet(
            Command::new(&ip).args(["addr", "add", &host_addr, "peer", &ns_addr, "dev", &host_if]),
        )?;
        quiet(Command::new(&ip).args(["link", "set", &host_if, "up"]))?;
        // A server tuned for long links: with Linux's default 4 MiB send buffer, each connection holds about 2 MiB
        // in flight, 20 MiB/s at 100 ms, and every client ties at 8 × that.
        quiet(
            Command::new(&ip)
                .args(in_ns)
                .args(["sysctl", "-w", SERVER_WMEM]),
        )?;
        ip_in_ns(&["link", "set", "lo", "up"])?;
        ip_in_ns(&["addr", "add", &ns_addr, "peer", &host_addr, "dev", &ns_if])?;
        ip_in_ns(&["link", "set", &ns_if, "up"])?;
        let port = free_port()?;
        let prefix = self.dir.join("nginx-ns");
        let conf = self.nginx_conf(&prefix, &ns_addr, port, CONN_CAP, None)?;
        let child = self.spawn_nginx(&prefix, &conf, Some((&ip, &ns)))?;
        self.nginx.push(child);
        wait_listening(&format!("{ns_addr}:{port}"), &prefix, self.nginx.last_mut())?;
        self.ns_base = Some(format!("http://{ns_addr}:{port}"));
        Ok(())
    }

    /// `tls`: also listen on that port with TLS 1.3 only, with that certificate and key.
    fn nginx_conf(
        &self,
        prefix: &Path,
        addr: &str,
        port: u16,
        cap: u64,
        tls: Option<(u16, &Path, &Path)>,
    ) -> Result<PathBuf> {
        for d in ["tmp", "logs"] {
            fs::create_dir_all(prefix.join(d))?;
        }
        let p = prefix.display();
        let www = self.www.display();
        let mut starts: Vec<String> = self.tail_starts.iter().map(u64::to_string).collect();
        starts.sort();
        starts.dedup();
        let slow = if starts.is_empty() {
            "0".to_owned()
        } else {
            starts.join("|")
        };
        let cap_k = cap / 1024;
        let (tail_fast, tail_slow) = (TAIL_FAST / 1024, TAIL_SLOW / 1024);
        let tls = tls.map_or(String::new(), |(port, cert, key)| {
            format!(
                "listen {addr}:{port} ssl backlog=4096;\n        ssl_protocols TLSv1.3;\n        \
                 ssl_certificate {};\n        ssl_certificate_key {};\n        ",
                cert.display(),
                key.display()
            )
        });
        let conf = format!(
            r#"# Written by `cargo xtask bench`; one process, in the foreground, so the bench can stop it.
daemon off;
master_process off;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    default_type application/octet-stream;
    log_format bench '$connection $request "$http_range" $status $body_bytes_sent $request_time';
    access_log {p}/logs/access.log bench;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    # The slow tail: the request for the second of 8 equal segments is served at {tail_slow}k/s, all others at
    # {tail_fast}k/s. A later request for the rest of that range (a re-split) starts elsewhere and is fast.
    map $http_range $tail_rate {{
        default {tail_fast}k;
        "~^bytes=({slow})-" {tail_slow}k;
    }}
    server {{
        listen {addr}:{port} backlog=4096;
        {tls}root {www};
        location /cap/ {{ alias {www}/; limit_rate {cap_k}k; }}
        location /tail/ {{ alias {www}/; limit_rate $tail_rate; }}
        location /slow/ {{ alias {www}/; limit_rate 1k; }}
    }}
}}
"#
        );
        let path = prefix.join("nginx.conf");
        fs::write(&path, conf)?;
        Ok(path)
    }

    fn spawn_nginx(
        &self,
        prefix: &Path,
        conf: &Path,
        netns: Option<(&Path, &str)>,
    ) -> Result<Child> {
        let mut cmd = match netns {
            Some((ip, ns)) => {
                let mut c = Command::new(ip);
                c.args(["netns", "exec", ns]).arg(&self.nginx_bin);
                c
            }
            None => Command::new(&self.nginx_bin),
        };
        cmd.arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(conf)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn()
            .with_context(|| format!("cannot start {}", self.nginx_bin.display()))
    }

    /// CPU seconds the loopback nginx (one worker, one process) has used so far, when `url` is one of its; read
    /// before and after a run, it is what serving that run cost the server.
    pub fn server_cpu(&self, url: &str) -> Option<f64> {
        let base = |b: &str| !b.is_empty() && url.starts_with(b);
        let ours = base(&self.base) || self.tls.as_ref().is_some_and(|t| base(&t.base));
        super::measure::proc_cpu(self.nginx.first().filter(|_| ours)?.id())
    }

    /// Remove every client output (between runs).
    pub fn clear_out(&self) -> Result<()> {
        let _ = fs::remove_dir_all(&self.out);
        fs::create_dir_all(&self.out)?;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.nginx {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(wire) = &mut self.wire {
            // Its TUN devices go with it.
            let _ = wire.kill();
            let _ = wire.wait();
        }
        if let Some(ns) = self.netns.take()
            && let Some(ip) = find_program("ip")
        {
            let _ = quiet(Command::new(ip).args(["netns", "del", &ns]));
        }
        if self.keep {
            println!("bench: kept {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Run a set-up command, failing with its stderr.
fn quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// Wait until nginx accepts connections; if it exits first, fail with its error log.
fn wait_listening(addr: &str, prefix: &Path, child: Option<&mut Child>) -> Result<()> {
    let child = child.context("no nginx child")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
            bail!("nginx exited ({status}): {}", log.trim());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nginx did not listen on {addr} within 10 s")
}

/// The sha256 of a file, by coreutils' `sha256sum`.
pub fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("cannot run sha256sum")?;
    if !out.status.success() {
        bail!("sha256sum {} failed", path.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// Whether the mode uses the full-size files.
pub fn scale(mode: Mode, full: u64, quick: u64, smoke: u64) -> u64 {
    match mode {
        Mode::Full => full,
        Mode::Quick => quick,
        Mode::Smoke => smoke,
    }
}
