//! The scenarios of issues 4 and 18, one function each, and the targets each one checks.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::clients::{Client, Clients, Kind};
use super::lab::{
    CONN_CAP, Lab, MIB, SERVER_WMEM, TAIL_FAST, TAIL_SLOW, TestFile, WIRE_DELAY_MS, WIRE_LOSS_PPM,
    scale,
};
use super::measure::{self, Row};
use super::{Mode, Options};

/// A target of issue 4 or 18 and how this run did against it.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub ratio: Option<f64>,
    /// `None` when it could not be measured.
    pub pass: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    /// The `--only` name.
    pub key: &'static str,
    pub title: String,
    /// What it shows and how it is set up.
    pub what: String,
    pub rows: Vec<Row>,
    /// Substitutions, skipped parts, anything a reader must know to read the numbers.
    pub notes: Vec<String>,
    pub targets: Vec<Target>,
}

impl Scenario {
    fn new(key: &'static str, title: impl Into<String>, what: impl Into<String>) -> Scenario {
        Scenario {
            key,
            title: title.into(),
            what: what.into(),
            rows: Vec::new(),
            notes: Vec::new(),
            targets: Vec::new(),
        }
    }

    fn row(&self, client: &str, setting: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.client == client && (setting.is_empty() || r.setting == setting))
    }

    /// The best (lowest when `lower`, else highest) median of `metric` among the rows of `clients` in `setting`.
    fn best(
        &self,
        clients: &[&str],
        setting: &str,
        metric: &str,
        lower: bool,
    ) -> Option<(String, f64)> {
        self.best_by(clients, setting, lower, |r| r.median(metric))
    }

    /// The best (lowest when `lower`, else highest) `stat` among the rows of `clients` in `setting`.
    fn best_by(
        &self,
        clients: &[&str],
        setting: &str,
        lower: bool,
        stat: impl Fn(&Row) -> Option<f64>,
    ) -> Option<(String, f64)> {
        self.rows
            .iter()
            .filter(|r| {
                clients.contains(&r.client.as_str()) && (setting.is_empty() || r.setting == setting)
            })
            .filter_map(|r| stat(r).map(|v| (r.client.clone(), v)))
            .reduce(|a, b| if (b.1 < a.1) == lower { b } else { a })
    }
}

/// The test files of this mode.
struct Files {
    big: TestFile,
    mid: Option<TestFile>,
    small: Option<TestFile>,
    cap: Vec<(u64, TestFile)>,
    queue: Vec<TestFile>,
}

impl Files {
    fn create(lab: &mut Lab, opts: &Options) -> Result<Files> {
        let mode = opts.mode;
        let started = Instant::now();
        let big = lab.add_file("big.bin", scale(mode, 1024, 256, 16) * MIB)?;
        let mut files = Files {
            big,
            mid: None,
            small: None,
            cap: Vec::new(),
            queue: Vec::new(),
        };
        if mode != Mode::Smoke {
            let mid = lab.add_file("mid.bin", scale(mode, 256, 64, 0) * MIB)?;
            lab.slow_second_eighth(&mid);
            files.mid = Some(mid);
            files.small = Some(lab.add_file("small.bin", scale(mode, 64, 16, 0) * MIB)?);
            let secs = cap_seconds(mode);
            for cap in [MIB, 20 * MIB] {
                let f = lab.add_file(&format!("cap{}.bin", cap / MIB), cap * secs)?;
                files.cap.push((cap, f));
            }
            let one = lab.add_file("one.bin", 256 * 1024)?;
            files.queue = lab.add_links(&one, "q", 200)?;
        }
        println!(
            "bench: test files ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(files)
    }
}

fn cap_seconds(mode: Mode) -> u64 {
    if mode == Mode::Full { 10 } else { 5 }
}

pub fn run_all(lab: &mut Lab, clients: &Clients, opts: &Options) -> Result<Vec<Scenario>> {
    let files = Files::create(lab, opts)?;
    lab.start_nginx()?;
    let mut done = Vec::new();
    if opts.mode == Mode::Smoke {
        done.push(loopback(lab, clients, opts, &files.big)?);
        done.push(https(lab, clients, opts, &files.big)?);
        return Ok(done);
    }
    let mid = files.mid.as_ref().context("no mid-size file")?;
    let small = files.small.as_ref().context("no small file")?;
    if opts.wants("loopback") {
        done.push(loopback(lab, clients, opts, &files.big)?);
    }
    if opts.wants("https") {
        done.push(https(lab, clients, opts, &files.big)?);
    }
    if opts.wants("capped") {
        done.push(capped(lab, clients, opts, small, mid)?);
    }
    if opts.wants("latency") {
        if let Err(e) = lab.start_netns() {
            println!("bench: no network namespace: {e:#}");
        }
        done.push(latency(lab, clients, opts, &files.big)?);
    }
    if opts.wants("tail") {
        done.push(tail(lab, clients, opts, mid)?);
    }
    if opts.wants("queue") {
        done.push(queue(lab, clients, opts, &files.queue)?);
    }
    if opts.wants("cap") {
        done.push(cap_accuracy(lab, clients, opts, &files.cap)?);
    }
    if opts.wants("service") {
        done.push(service(lab, clients, opts, mid)?);
    }
    Ok(done)
}

/// `--smoke` fails only if sdm produced a wrong file (or none), over plain HTTP or HTTPS.
pub fn check_smoke(scenarios: &[Scenario]) -> Result<()> {
    let mut ran = false;
    for s in scenarios {
        for row in s.rows.iter().filter(|r| r.client == "sdm") {
            ran = true;
            if let Some(f) = row.failures.first() {
                bail!("smoke: sdm failed ({}): {f}", s.key);
            }
        }
    }
    if !ran {
        bail!("smoke: sdm did not run");
    }
    Ok(())
}

/// One client, one setting, `opts.runs` times: wall, CPU, peak RSS and throughput, each output sha256-checked.
struct Job<'a> {
    client: &'a Client,
    setting: String,
    url: String,
    file: &'a TestFile,
    n: u32,
    limit: Option<u64>,
    timeout: Duration,
    /// Run once untimed first: the first run after the lab writes its files, or after another client filled
    /// gigabytes of tmpfs, can take 2-6× as long on this VM (the same kernel copy, slower), whichever client it is.
    warmup: bool,
}

fn series(lab: &Lab, opts: &Options, job: &Job) -> Result<Row> {
    let mut rows = rounds(lab, std::slice::from_ref(job), opts.runs)?;
    Ok(rows.pop().expect("one row per job"))
}

/// `runs` rounds in which every job runs once, in turn: a slow spell of this VM then falls on every client alike,
/// not on whichever ran during it. Jobs with `warmup` first run once untimed, before the first round.
fn rounds(lab: &Lab, jobs: &[Job], runs: usize) -> Result<Vec<Row>> {
    let log = lab.dir.join("client.log");
    let argvs: Vec<(Vec<String>, PathBuf)> = jobs
        .iter()
        .map(|job| {
            let out = lab.out.join(&job.file.name);
            let mut argv = job.client.argv(&job.url, &out, job.n, job.limit);
            if job.client.kind == Kind::Bound {
                argv.push(job.file.size.to_string());
            }
            if !job.url.starts_with("https://") {
                return Ok((argv, out));
            }
            let ca = &lab
                .tls
                .as_ref()
                .context("an https job without a TLS listener")?
                .ca;
            let argv = (job.client.trusting(argv, ca))
                .with_context(|| format!("{} cannot be told to trust a CA", job.client.name))?;
            Ok((argv, out))
        })
        .collect::<Result<_>>()?;
    let mut rows: Vec<Row> = jobs
        .iter()
        .zip(&argvs)
        .map(|(job, (argv, _))| Row::new(job.client.name, &job.setting, display(argv, lab)))
        .collect();
    for (job, (argv, _)) in jobs.iter().zip(&argvs).filter(|(j, _)| j.warmup) {
        lab.clear_out()?;
        measure::timed(argv, job.timeout, &log)?;
    }
    for run in 1..=runs {
        for ((job, (argv, out)), row) in jobs.iter().zip(&argvs).zip(&mut rows) {
            lab.clear_out()?;
            let served_before = lab.server_cpu(&job.url);
            let (s, status) = measure::timed(argv, job.timeout, &log)?;
            let served = lab
                .server_cpu(&job.url)
                .zip(served_before)
                .map(|(after, before)| after - before);
            row.runs += 1;
            // The bound writes no file: it checks its own status codes and byte counts.
            let outputs = if job.client.kind == Kind::Bound {
                vec![]
            } else {
                vec![(out.clone(), job.file.sha256.as_str())]
            };
            let verdict = verify(&status, &log, &outputs);
            let head = format!(
                "  {:<18} {:<14} run {run}/{runs}",
                job.client.name, job.setting
            );
            match verdict {
                Ok(()) => {
                    let speed = job.file.size as f64 / MIB as f64 / s.wall;
                    row.push("wall", "s", s.wall);
                    row.push_opt("cpu", "s", s.cpu);
                    row.push_opt("user cpu", "s", s.user);
                    row.push_opt("rss", "MB", s.rss_mb);
                    row.push("speed", "MiB/s", speed);
                    row.push_opt("nginx cpu", "s", served);
                    println!(
                        "{head}: {:.2} s, {} CPU, {} RSS, {speed:.1} MiB/s",
                        s.wall,
                        s.cpu.map_or("?".into(), |c| format!("{c:.2} s")),
                        s.rss_mb.map_or("?".into(), |r| format!("{r:.1} MB")),
                    );
                }
                Err(e) => {
                    println!("{head}: FAILED: {e}");
                    row.failures.push(format!("run {run}: {e}"));
                }
            }
        }
    }
    lab.clear_out()?;
    Ok(rows)
}

/// A run counts only if the client exited 0 and every output has the right sha256.
fn verify(status: &ExitStatus, log: &Path, files: &[(PathBuf, &str)]) -> Result<(), String> {
    if !status.success() {
        return Err(format!("exit {status}: {}", measure::tail(log)));
    }
    measure::check_files(files).map_err(|e| format!("{e:#}"))
}

/// The command line as a reader can rerun it: lab paths and the port replaced by placeholders.
fn display(argv: &[String], lab: &Lab) -> String {
    let mut parts: Vec<String> = argv.to_vec();
    // The program's name without its folder, also behind `env VAR=value` (an https row's sdm).
    if parts.first().is_some_and(|p| p == "env") {
        parts.remove(0);
    }
    if let Some(program) = parts.iter_mut().find(|p| !p.contains('='))
        && let Some(name) = Path::new(program.as_str()).file_name()
    {
        *program = name.to_string_lossy().into_owned();
    }
    let mut s = parts.join(" ");
    s = s.replace(&lab.dir.display().to_string(), "$LAB");
    if !lab.base.is_empty() {
        s = s.replace(&lab.base, "$NGINX");
    }
    if let Some(tls) = &lab.tls {
        s = s.replace(&tls.base, "$NGINX_TLS");
    }
    if let Some(ns) = &lab.ns_base {
        s = s.replace(ns, "$NGINX_NS");
    }
    s
}

fn timeout_for(bytes: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / rate * 4.0 + 60.0)
}

fn ratio_target(
    name: &str,
    goal: &str,
    measured: Option<f64>,
    against: Option<(String, f64)>,
    max: f64,
) -> Target {
    match (measured, against) {
        (Some(m), Some((who, a))) if a > 0.0 => {
            let r = m / a;
            Target {
                name: name.into(),
                goal: goal.into(),
                measured: format!("sdm {m:.3} vs {who} {a:.3}"),
                ratio: Some(r),
                pass: Some(r <= max),
            }
        }
        _ => unmeasured(name, goal),
    }
}

fn unmeasured(name: &str, goal: &str) -> Target {
    Target {
        name: name.into(),
        goal: goal.into(),
        measured: "not measured".into(),
        ratio: None,
        pass: None,
    }
}

/// The latency scenario runs this many times the runs of the others: its verdict sits near a client's two modes.
pub const LATENCY_RUNS_FACTOR: usize = 2;

const ARIA2: [&str; 3] = ["aria2c (defaults)", "aria2c -x N", "aria2c (matched)"];

/// 1 GiB from nginx on loopback into tmpfs, 8 connections: CPU efficiency.
fn loopback(lab: &Lab, clients: &Clients, opts: &Options, file: &TestFile) -> Result<Scenario> {
    let n = 8;
    let mut sc = Scenario::new(
        "loopback",
        format!(
            "{} MiB from nginx on loopback into tmpfs, {n} connections",
            file.size / MIB
        ),
        "CPU efficiency: nothing limits the transfer but the clients (and nginx) on 2 cores. Each client runs \
         once untimed, then the clients take turns, one run each per round, so a slow spell of this VM falls on \
         all of them alike.",
    );
    println!("bench: {}", sc.title);
    let url = format!("{}/{}", lab.base, file.name);
    let jobs: Vec<Job> = (clients.all.iter())
        .map(|client| Job {
            client,
            setting: format!("N={}", client.connections(n)),
            url: url.clone(),
            file,
            n,
            limit: None,
            timeout: timeout_for(file.size, 50.0 * MIB as f64),
            warmup: true,
        })
        .collect();
    sc.rows = rounds(lab, &jobs, opts.runs)?;
    let peers: Vec<&str> = clients
        .all
        .iter()
        .filter(|c| !c.kind.is_sdm())
        .map(|c| c.name)
        .collect();
    let sdm = sc.row("sdm", "").cloned();
    let sdm_wall = sdm.as_ref().and_then(|r| r.median("wall"));
    let sdm_cpu = sdm.as_ref().and_then(|r| r.median("cpu"));
    let sdm_rss = sdm.as_ref().and_then(|r| r.median("rss"));
    sc.targets.push(ratio_target(
        "unthrottled wall",
        "≤ 0.9× aria2c's",
        sdm_wall,
        sc.best(&ARIA2, "", "wall", true),
        0.9,
    ));
    sc.targets.push(ratio_target(
        "unthrottled CPU (user+sys)",
        "≤ 0.7× aria2c's",
        sdm_cpu,
        sc.best(&ARIA2, "", "cpu", true),
        0.7,
    ));
    sc.targets.push(match sdm_rss {
        Some(r) => Target {
            name: "unthrottled peak RSS".into(),
            goal: "≤ 12 MB".into(),
            measured: format!("{r:.1} MB"),
            ratio: Some(r / 12.0),
            pass: Some(r <= 12.0),
        },
        None => unmeasured("unthrottled peak RSS", "≤ 12 MB"),
    });
    if let (Some(w), Some((who, b))) = (sdm_wall, sc.best(&peers, "", "wall", true)) {
        sc.notes.push(format!(
            "Fastest peer: {who} at {b:.2} s; sdm/{who} wall = {:.2}.",
            w / b
        ));
    }
    if let (Some(c), Some((who, b))) = (sdm_cpu, sc.best(&peers, "", "cpu", true)) {
        sc.notes.push(format!(
            "Thriftiest peer: {who} at {b:.2} s CPU; sdm/{who} CPU = {:.2}.",
            c / b
        ));
    }
    if let Some(before) = sc.row("sdm --no-splice", "").cloned() {
        let (bc, bw, br) = (
            before.median("cpu"),
            before.median("wall"),
            before.median("rss"),
        );
        if let (Some(c), Some(bc), Some(w), Some(bw), Some(r), Some(br)) =
            (sdm_cpu, bc, sdm_wall, bw, sdm_rss, br)
        {
            sc.notes.push(format!(
                "splice(2) before/after: with `--no-splice` sdm took {bw:.2} s, {bc:.2} s CPU, {br:.1} MB; \
                 with it {w:.2} s, {c:.2} s CPU, {r:.1} MB (CPU ×{:.2}).",
                c / bc
            ));
        }
    }
    Ok(sc)
}

/// The HTTPS scenario's peak RSS target: name and goal.
const RSS: (&str, &str) = ("HTTPS peak RSS", "≤ 10 MB");

/// The loopback file over HTTPS (TLS 1.3, the same nginx) at 8 connections and at 1, next to aria2c matched and
/// curl: what TLS costs each client, and whether sdm's connections cost CPU (issue 18).
fn https(lab: &Lab, clients: &Clients, opts: &Options, file: &TestFile) -> Result<Scenario> {
    let mut sc = Scenario::new(
        "https",
        format!(
            "{} MiB over HTTPS (TLS 1.3) from nginx on loopback into tmpfs",
            file.size / MIB
        ),
        "What TLS costs: the loopback scenario's file from the same nginx's TLS 1.3 listener (a throwaway CA, \
         given to sdm as SSL_CERT_FILE, to aria2c as --ca-certificate, to curl as --cacert). nginx decrypts \
         nothing but encrypts every byte on one worker, so on 2 cores it shares the machine with the client. sdm \
         runs at 8 connections and at 1: eight should cost no more CPU than one.",
    );
    let targets = [
        ("HTTPS wall, 8 connections", "≤ 0.8× aria2c matched's", 0.8),
        (
            "HTTPS CPU (user+sys), 8 connections",
            "≤ 0.6× aria2c matched's",
            0.6,
        ),
        ("HTTPS CPU, sdm -c 8 vs -c 1", "≤ 1.15× sdm -c 1's", 1.15),
    ];
    let Some(tls) = &lab.tls else {
        sc.notes
            .push("Not run: nginx has no TLS listener (openssl is missing).".into());
        for (name, goal, _) in targets {
            sc.targets.push(unmeasured(name, goal));
        }
        sc.targets.push(unmeasured(RSS.0, RSS.1));
        return Ok(sc);
    };
    println!("bench: {}", sc.title);
    let url = format!("{}/{}", tls.base, file.name);
    let smoke = opts.mode == Mode::Smoke;
    let job = |client, n| Job {
        client,
        setting: format!("N={n}"),
        url: url.clone(),
        file,
        n,
        limit: None,
        timeout: timeout_for(file.size, 20.0 * MIB as f64),
        warmup: !smoke,
    };
    let mut jobs = Vec::new();
    for client in clients.pick(&[Kind::Sdm, Kind::SdmBaseline]) {
        jobs.push(job(client, 8));
        if !smoke {
            jobs.push(job(client, 1));
        }
    }
    for client in clients.pick(&[Kind::Aria2Matched, Kind::Curl]) {
        jobs.push(Job {
            setting: format!("N={}", client.connections(8)),
            ..job(client, 8)
        });
    }
    sc.rows = rounds(lab, &jobs, opts.runs)?;
    let measured = sc.clone();
    let median = |client: &str, setting: &str, metric: &str| {
        (measured.row(client, setting)).and_then(|r| r.median(metric))
    };
    let named = |who: &str, v: Option<f64>| v.map(|v| (who.to_owned(), v));
    let aria = "aria2c (matched)";
    let ratios = [
        (
            median("sdm", "N=8", "wall"),
            named(aria, median(aria, "N=8", "wall")),
        ),
        (
            median("sdm", "N=8", "cpu"),
            named(aria, median(aria, "N=8", "cpu")),
        ),
        (
            median("sdm", "N=8", "cpu"),
            named("sdm -c 1", median("sdm", "N=1", "cpu")),
        ),
    ];
    for ((name, goal, max), (m, against)) in targets.into_iter().zip(ratios) {
        sc.targets.push(ratio_target(name, goal, m, against, max));
    }
    let rss = [median("sdm", "N=8", "rss"), median("sdm", "N=1", "rss")]
        .into_iter()
        .flatten()
        .reduce(f64::max);
    let (name, goal) = RSS;
    sc.targets.push(match rss {
        Some(r) => Target {
            name: name.into(),
            goal: goal.into(),
            measured: format!("{r:.1} MB (the larger of sdm's two medians)"),
            ratio: Some(r / 10.0),
            pass: Some(r <= 10.0),
        },
        None => unmeasured(name, goal),
    });
    if let (Some(w), Some(served), Some(aw), Some(aserved)) = (
        median("sdm", "N=8", "wall"),
        median("sdm", "N=8", "nginx cpu"),
        median(aria, "N=8", "wall"),
        median(aria, "N=8", "nginx cpu"),
    ) {
        sc.notes.push(format!(
            "The server's side: nginx's one worker spent {served:.2} s of CPU serving sdm -c 8 (sdm's wall \
             {w:.2} s, ×{:.2} of it) and {aserved:.2} s serving aria2c matched (its wall {aw:.2} s, ×{:.2}). No \
             client finishes before the server has encrypted and sent the file: a wall near ×1.0 of the server's CPU \
             is the server's pace, not the client's.",
            w / served,
            aw / aserved
        ));
    }
    for n in ["N=8", "N=1"] {
        if let (Some(c), Some(bc), Some(w), Some(bw)) = (
            median("sdm", n, "cpu"),
            median("sdm (baseline)", n, "cpu"),
            median("sdm", n, "wall"),
            median("sdm (baseline)", n, "wall"),
        ) {
            sc.notes.push(format!(
                "Before/after at {n}: the baseline took {bw:.2} s, {bc:.2} s CPU; this build {w:.2} s, {c:.2} s \
                 CPU (wall ×{:.2}, CPU ×{:.2}).",
                w / bw,
                c / bc
            ));
        }
    }
    Ok(sc)
}

/// 256 MiB with nginx `limit_rate` 5 MiB/s per connection at 1, 4, 8 and 16 connections.
fn capped(
    lab: &Lab,
    clients: &Clients,
    opts: &Options,
    small: &TestFile,
    mid: &TestFile,
) -> Result<Scenario> {
    let cap = CONN_CAP as f64 / MIB as f64;
    let mut sc = Scenario::new(
        "capped",
        format!(
            "{} MiB, nginx limit_rate {cap} MiB/s per connection, 1–16 connections",
            mid.size / MIB
        ),
        format!(
            "Segmenting gain: the ideal is N × {cap} MiB/s. `of ideal` = measured / (connections opened × {cap} MiB/s)."
        ),
    );
    sc.notes.push(format!(
        "N=1 uses a {} MiB file (at {cap} MiB/s the {} MiB file takes {:.0} s a run); only single-connection clients \
         and sdm run there. aria2c (defaults) and curl always open one connection, so they appear only at N=1.",
        small.size / MIB,
        mid.size / MIB,
        mid.size as f64 / CONN_CAP as f64
    ));
    sc.notes.push(
        "nginx's `limit_rate` gives every request one second of credit up front (ngx_http_write_filter: \
         `limit_rate * (ngx_time() - start_sec + 1) - sent`), so a segment arrives faster than the cap by up to \
         one second's worth, and a client that issues more requests (re-splitting) collects more credit. Above \
         100 % of ideal is therefore possible; compare clients with each other as much as with the ideal."
            .into(),
    );
    println!("bench: {}", sc.title);
    for n in [1u32, 4, 8, 16] {
        let (file, kinds): (&TestFile, &[Kind]) = if n == 1 {
            (
                small,
                &[Kind::Sdm, Kind::SdmBaseline, Kind::Aria2Default, Kind::Curl],
            )
        } else {
            (
                mid,
                &[Kind::Sdm, Kind::SdmBaseline, Kind::Aria2Matched, Kind::Axel],
            )
        };
        for client in clients.pick(kinds) {
            let conns = client.connections(n);
            let ideal = f64::from(conns) * cap;
            let job = Job {
                client,
                setting: format!("N={n}"),
                url: format!("{}/cap/{}", lab.base, file.name),
                file,
                n,
                limit: None,
                timeout: timeout_for(file.size, ideal * MIB as f64),
                warmup: false,
            };
            let mut row = series(lab, opts, &job)?;
            let speeds = row.values("speed").to_vec();
            for s in speeds {
                row.push("of ideal", "%", s / ideal * 100.0);
            }
            sc.rows.push(row);
        }
    }
    for n in [8, 16] {
        let name = format!("capped per connection, N={n}");
        let goal = "≥ 95 % of N × cap";
        let setting = format!("N={n}");
        sc.targets.push(
            match sc.row("sdm", &setting).and_then(|r| r.median("of ideal")) {
                Some(p) => Target {
                    name,
                    goal: goal.into(),
                    measured: format!("{p:.1} % of {:.0} MiB/s", f64::from(n) * cap),
                    ratio: Some(p / 100.0),
                    pass: Some(p >= 95.0),
                },
                None => unmeasured(&name, goal),
            },
        );
    }
    Ok(sc)
}

/// Issue 4's real-world link (the setup of Hydra's published benchmark): 100 ms RTT and 0.1 % loss, 8 connections.
fn latency(lab: &Lab, clients: &Clients, opts: &Options, file: &TestFile) -> Result<Scenario> {
    let n = 8;
    let loss = f64::from(WIRE_LOSS_PPM) / 1e4;
    let mut sc = Scenario::new(
        "latency",
        format!(
            "{} MiB over a link with {WIRE_DELAY_MS} ms each way ({} ms RTT) and {loss} % loss, {n} connections",
            file.size / MIB,
            2 * WIRE_DELAY_MS
        ),
        format!(
            "nginx in a network namespace behind a userspace netem (`xtask/src/bench/wire.rs`: this kernel has no \
             sch_netem): every packet is held {WIRE_DELAY_MS} ms and {loss} % are dropped, each way, with a queue \
             of {} packets per direction (netem's default is 1000; `$SDM_BENCH_WIRE_QUEUE` changes it). Packets \
             keep TCP segmentation offload (up to 64 KiB each), as netem sees them on a veth pair. The server's \
             send buffers may grow to 64 MiB per connection (`{SERVER_WMEM}` in its namespace), as on a server \
             tuned for long links: with Linux's default 4 MiB, every connection is held to about 20 MiB/s at this \
             RTT and every client ties. Each client runs once untimed before the timed rounds. Single-connection \
             clients are left out to keep the run short.",
            super::wire::queue()
        ),
    );
    let targets = [
        (
            "100 ms RTT: sdm vs the link's bound",
            "≥ 0.95× the bound's throughput",
        ),
        (
            "100 ms RTT: sdm vs aria2c -x 8 (Hydra's command)",
            "≥ 1.3× its throughput",
        ),
    ];
    let Some(base) = lab.ns_base.clone() else {
        sc.notes.push(
            "Skipped: the network namespace could not be set up (needs root, `ip` and /dev/net/tun).".into(),
        );
        for (name, goal) in targets {
            sc.targets.push(unmeasured(name, goal));
        }
        return Ok(sc);
    };
    println!("bench: {}", sc.title);
    let bound = Client::bound()?;
    let mut picked = clients.pick(&[Kind::Sdm, Kind::Aria2Matched, Kind::Aria2X, Kind::Axel]);
    picked.insert(1, &bound);
    let jobs: Vec<Job> = picked
        .into_iter()
        .map(|client| Job {
            client,
            setting: format!("N={}", client.connections(n)),
            url: format!("{base}/{}", file.name),
            file,
            n,
            limit: None,
            timeout: timeout_for(file.size, 2.0 * MIB as f64),
            warmup: true,
        })
        .collect();
    let runs = LATENCY_RUNS_FACTOR * opts.runs;
    sc.rows = rounds(lab, &jobs, runs)?;
    // The speed of all runs together: what a user downloading many files over this link gets.
    let overall = |r: &Row| {
        let walls = r.values("wall");
        (!walls.is_empty())
            .then(|| walls.len() as f64 * file.size as f64 / MIB as f64 / walls.iter().sum::<f64>())
    };
    let measured = sc.clone();
    let overall_of = |client: &str| measured.row(client, "").and_then(overall);
    let sdm = overall_of("sdm");
    let all_runs = sc
        .rows
        .iter()
        .filter_map(|r| overall(r).map(|v| format!("{} {v:.1} MiB/s", r.client)))
        .collect::<Vec<_>>()
        .join(", ");
    sc.notes.push(format!(
        "The clients take turns: {runs} rounds, each running every client once, so a slow spell of this VM falls on \
         all of them alike. aria2c has two speeds on this link (its slowest connection either keeps up or trickles \
         for the last second), so the median of a few runs lands on either and flips between runs of the bench. \
         The targets are therefore judged on all runs together: bytes over seconds, summed over the runs. Over all \
         runs: {all_runs}."
    ));
    sc.notes.push(format!(
        "The bound (issue 18's restated target): `{}` runs {n} threads, each one `GET` with a `Range` of an eighth \
         over its own TCP connection, reading to the end and discarding the bytes (`xtask/src/bench/bound.rs`): no \
         file, no re-splitting, the link's and the server's own speed. It writes nothing, so its runs are checked by \
         status (206) and byte count instead of sha256.",
        bound.name
    ));
    sc.notes.push(format!(
        "`aria2c -x {n}` is the command of Hydra's published benchmark (its `--split` stays 5, so it opens 5 \
         connections); `aria2c -x {n} -s {n}` is the matched row (also `-k 1M --file-allocation=none`)."
    ));
    if let (Some(s), Some(m), Some(b)) = (
        sdm,
        overall_of("aria2c (matched)"),
        overall_of("link bound"),
    ) {
        sc.notes.push(format!(
            "Against `aria2c -x {n} -s {n}` (matched) sdm reached {:.2}× its throughput over all runs. That is not \
             a target since issue 18: issue 4 asked for 1.3×, but the link's own bound is {:.2}× aria2c matched \
             here, and 1.3× is beyond the link whenever aria2c matched reaches {:.0} % of the bound.",
            s / m,
            b / m,
            100.0 / 1.3
        ));
    }
    let against = [("link bound", 0.95), ("aria2c -x N", 1.3)];
    for ((name, goal), (who, min)) in targets.into_iter().zip(against) {
        sc.targets.push(match (sdm, overall_of(who)) {
            (Some(s), Some(a)) if a > 0.0 => Target {
                name: name.into(),
                goal: goal.into(),
                measured: format!(
                    "sdm {s:.1} MiB/s vs {who} {a:.1} MiB/s, all {runs} runs together"
                ),
                ratio: Some(s / a),
                pass: Some(s / a >= min),
            },
            _ => unmeasured(name, goal),
        });
    }
    Ok(sc)
}

/// One slow range: the request for the second of 8 equal segments is served at 1 MiB/s, every other at 5 MiB/s.
fn tail(lab: &Lab, clients: &Clients, opts: &Options, file: &TestFile) -> Result<Scenario> {
    let n = 8u32;
    let fast = TAIL_FAST as f64 / MIB as f64;
    let slow = TAIL_SLOW as f64 / MIB as f64;
    let alone = file.size as f64 / MIB as f64 / (f64::from(n - 1) * fast);
    let mut sc = Scenario::new(
        "tail",
        format!(
            "{} MiB, one slow range ({slow} MiB/s, others {fast} MiB/s), {n} connections",
            file.size / MIB
        ),
        format!(
            "The tail. nginx maps `Range: bytes={}-` (where the second of 8 equal segments starts) to \
             {slow} MiB/s and every other request to {fast} MiB/s. A client that re-splits the slow range asks for \
             its rest at another offset and gets it fast. `vs fast-only` = wall / {alone:.2} s, the time the 7 fast \
             connections alone need.",
            file.size / 8
        ),
    );
    println!("bench: {}", sc.title);
    let access = lab.dir.join("nginx/logs/access.log");
    let slow_req = format!("\"bytes={}-", file.size / 8);
    for client in clients.pick(&[Kind::Sdm, Kind::Aria2Matched, Kind::Axel]) {
        let before = fs::metadata(&access).map(|m| m.len()).unwrap_or(0);
        let job = Job {
            client,
            setting: format!("N={n}"),
            url: format!("{}/tail/{}", lab.base, file.name),
            file,
            n,
            limit: None,
            timeout: timeout_for(file.size, slow * MIB as f64),
            warmup: false,
        };
        let mut row = series(lab, opts, &job)?;
        let walls = row.values("wall").to_vec();
        for w in walls {
            row.push("vs fast-only", "×", w / alone);
        }
        // Did the client ask for the slow range at all? Otherwise its time says nothing about the tail.
        let log = fs::read(&access).unwrap_or_default();
        let new = String::from_utf8_lossy(log.get(before as usize..).unwrap_or_default());
        let hits = new.lines().filter(|l| l.contains(&slow_req)).count();
        if hits < row.runs {
            sc.notes.push(format!(
                "{} asked for the slow range in {hits} of {} runs: it splits elsewhere, so the slow server never \
                 held it back in the other runs.",
                client.name, row.runs
            ));
        }
        sc.rows.push(row);
    }
    let peers = ["aria2c (matched)", "axel"];
    if let Some((who, w)) = sc.best(&peers, "", "wall", true) {
        sc.notes.push(format!(
            "Fastest peer: {who} at {w:.2} s ({:.2}× the fast-only time). With nginx's one-second credit per request \
             (see the capped scenario) a fast connection runs a little above {fast} MiB/s, so the fast-only time \
             is a slightly generous yardstick; the peers in the same run are the strict one.",
            w / alone
        ));
    }
    sc.targets.push(
        match sc.row("sdm", "").and_then(|r| r.median("vs fast-only")) {
            Some(r) => Target {
                name: "slow tail".into(),
                goal: "≤ 1.1× the fast connections' time alone".into(),
                measured: format!("{:.2} s vs {alone:.2} s", r * alone),
                ratio: Some(r),
                pass: Some(r <= 1.1),
            },
            None => unmeasured("slow tail", "≤ 1.1× the fast connections' time alone"),
        },
    );
    Ok(sc)
}

/// `sdm serve` in the foreground for one data directory; killed (and any service a CLI call started) on drop.
struct Service {
    child: Child,
    home: PathBuf,
    sdm: PathBuf,
}

impl Service {
    /// `ca`: a CA the service must trust for https, given as `SSL_CERT_FILE` (which replaces the system's store
    /// for its verifier): the service does the downloading, so the variable must be in its environment.
    fn start(sdm: &Path, home: &Path, ca: Option<&Path>) -> Result<Service> {
        let _ = fs::remove_dir_all(home);
        fs::create_dir_all(home)?;
        let log = fs::File::create(home.join("bench-service.log"))?;
        let mut cmd = Command::new(sdm);
        if let Some(ca) = ca {
            cmd.env("SSL_CERT_FILE", ca);
        }
        let child = cmd
            .arg("serve")
            .env("SDM_HOME", home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start sdm serve")?;
        let mut svc = Service {
            child,
            home: home.to_path_buf(),
            sdm: sdm.to_path_buf(),
        };
        // Wait for the socket ourselves: a CLI call before it exists would start a second, detached service.
        let deadline = Instant::now() + Duration::from_secs(10);
        let socket = home.join("sdm.sock");
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Some(status) = svc.child.try_wait()? {
                bail!(
                    "sdm serve exited ({status}): {}",
                    measure::tail(&home.join("bench-service.log"))
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "sdm serve did not listen on {} within 10 s",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(svc)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The queue scenarios' settings: five downloads at a time, into `out`.
    fn queue_into(&self, out: &Path) -> Result<()> {
        let dir = format!("download_dir={}", out.display());
        self.cli(&["settings", "--set", "max_concurrent=5", "--set", &dir])
            .map(drop)
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.sdm)
            .args(args)
            .env("SDM_HOME", &self.home)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run sdm {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "sdm {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Statuses of every download, from `sdm ls --json`.
    fn statuses(&self) -> Result<Vec<String>> {
        let list: serde_json::Value = serde_json::from_str(&self.cli(&["ls", "--json"])?)?;
        Ok(list
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| d["status"].as_str().unwrap_or("?").to_owned())
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A service some CLI call started on its own (it should not happen) holds the lock with its pid.
        let lock = fs::read_to_string(self.home.join("service.lock")).unwrap_or_default();
        if let Ok(pid) = lock.trim().parse::<u32>()
            && pid != self.child.id()
            && fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.contains("serve"))
        {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = fs::remove_dir_all(&self.home);
    }
}

/// The queue target (issue 18): name and goal.
const QUEUE_TARGET: (&str, &str) = (
    "200 files through the queue over HTTPS, 5 at a time",
    "wall ≤ 1.0× aria2c -i -j 5's",
);

/// 200 small files through the queue, 5 at a time, over http and https: per-download overhead.
fn queue(lab: &Lab, clients: &Clients, opts: &Options, files: &[TestFile]) -> Result<Scenario> {
    let kib = files.first().map_or(0, |f| f.size / 1024);
    let mut sc = Scenario::new(
        "queue",
        format!(
            "{} files of {kib} KiB through a queue, 5 at a time, over http and https",
            files.len()
        ),
        "Per-download overhead. sdm: `sdm serve` with max_concurrent=5, then `sdm add -i LIST` (one URL a line, \
         sent to the service in batches) and `sdm wait` (no id: until nothing is queued or downloading); the time \
         runs from the add to the wait's return, and CPU is the service's plus the two CLI calls'. aria2c: \
         `-i LIST -j 5`. curl: `--parallel --parallel-max 5`. Over https, the service is started with the lab's CA \
         as `SSL_CERT_FILE`, aria2c gets `--ca-certificate`, curl `--cacert`.",
    );
    println!("bench: {}", sc.title);
    let sha: Vec<(PathBuf, &str)> = files
        .iter()
        .map(|f| (lab.out.join(&f.name), f.sha256.as_str()))
        .collect();
    let mut schemes: Vec<(&str, &str, Option<&Path>)> = vec![("http", lab.base.as_str(), None)];
    match &lab.tls {
        Some(tls) => schemes.push(("https", tls.base.as_str(), Some(tls.ca.as_path()))),
        None => sc
            .notes
            .push("No https rows: nginx has no TLS listener (openssl is missing).".into()),
    }
    let runs = opts.runs;
    for (scheme, base, ca) in schemes {
        let urls: Vec<String> = files.iter().map(|f| format!("{base}/{}", f.name)).collect();
        let list = lab.dir.join(format!("queue-{scheme}.txt"));
        fs::write(&list, urls.join("\n") + "\n")?;
        let sdm = clients.get(Kind::Sdm);
        let env = if ca.is_some() {
            "SSL_CERT_FILE=$LAB/tls/ca.pem "
        } else {
            ""
        };
        let mut sdm_row = Row::new(
            "sdm add -i",
            scheme,
            format!(
                "{env}sdm serve & sdm settings --set max_concurrent=5 --set download_dir=$LAB/out; \
                 sdm add -i $LAB/queue-{scheme}.txt; sdm wait"
            ),
        );
        let mut peers = queue_peers(lab, clients, scheme, &urls, ca, &sha)?;
        // Rounds, as in the other scenarios: a slow spell of this VM falls on every client alike.
        for run in 1..=runs {
            if let Some(sdm) = sdm {
                let head = format!("  sdm add -i ({scheme}) run {run}/{runs}");
                queue_sdm_run(lab, sdm, &list, ca, &sha, &mut sdm_row, &head)?;
            }
            for (row, argv) in &mut peers {
                let head = format!("  {} ({scheme}) run {run}/{runs}", row.client);
                queue_peer_run(lab, argv, &sha, row, &head)?;
            }
        }
        if sdm.is_some() {
            sc.rows.push(sdm_row);
        }
        sc.rows.extend(peers.into_iter().map(|(row, _)| row));
    }
    let (name, goal) = QUEUE_TARGET;
    let wall = |client: &str| {
        sc.rows
            .iter()
            .find(|r| r.client == client && r.setting == "https")
            .and_then(|r| r.median("wall"))
    };
    let target = ratio_target(
        name,
        goal,
        wall("sdm add -i"),
        wall("aria2c -i -j 5").map(|a| ("aria2c -i -j 5".to_owned(), a)),
        1.0,
    );
    sc.targets.push(target);
    lab.clear_out()?;
    Ok(sc)
}

/// One run of the service: a fresh `sdm serve`, `sdm add -i LIST`, `sdm wait`, then every file checked.
fn queue_sdm_run(
    lab: &Lab,
    sdm: &Client,
    list: &Path,
    ca: Option<&Path>,
    sha: &[(PathBuf, &str)],
    row: &mut Row,
    head: &str,
) -> Result<()> {
    lab.clear_out()?;
    row.runs += 1;
    let svc = Service::start(&sdm.program, &lab.dir.join("home-queue"), ca)?;
    svc.queue_into(&lab.out)?;
    let list = list.display().to_string();
    let cpu0 = measure::children_cpu();
    let svc_cpu0 = measure::proc_cpu(svc.pid()).unwrap_or(0.0);
    let start = Instant::now();
    let added = (svc.cli(&["add", "-i", &list])).map(|_| start.elapsed().as_secs_f64());
    let waited = added.and_then(|a| svc.cli(&["wait", "--timeout", "300"]).map(|_| a));
    let wall = start.elapsed().as_secs_f64();
    let returned = std::time::SystemTime::now();
    let cpu =
        measure::proc_cpu(svc.pid()).unwrap_or(0.0) - svc_cpu0 + measure::children_cpu() - cpu0;
    let rss = measure::proc_mem_mb(svc.pid(), "VmHWM");
    let verdict = waited.map_err(|e| format!("{e:#}")).and_then(|added| {
        let statuses = svc.statuses().map_err(|e| format!("{e:#}"))?;
        let complete = statuses.iter().filter(|s| *s == "completed").count();
        if complete != sha.len() {
            return Err(format!("{complete} of {} completed", sha.len()));
        }
        measure::check_files(sha).map_err(|e| format!("{e:#}"))?;
        Ok(added)
    });
    drop(svc);
    match verdict {
        Ok(added) => {
            row.push("wall", "s", wall);
            row.push("cpu", "s", cpu);
            row.push_opt("rss", "MB", rss);
            row.push("per file", "ms", wall / sha.len() as f64 * 1000.0);
            row.push("adding", "s", added);
            // From the last byte written to `sdm wait`'s return: the wait's own latency, which should be a few
            // milliseconds (it listens for events; a missed one costs up to its one-second poll).
            let last = (sha.iter())
                .filter_map(|(p, _)| fs::metadata(p).and_then(|m| m.modified()).ok())
                .max();
            let late = last.and_then(|l| returned.duration_since(l).ok());
            row.push_opt("wait after last write", "s", late.map(|d| d.as_secs_f64()));
            println!("{head}: {wall:.2} s ({added:.2} s adding), {cpu:.2} s CPU");
        }
        Err(e) => {
            println!("{head}: FAILED: {e}");
            row.failures.push(format!("run {}: {e}", row.runs));
        }
    }
    Ok(())
}

/// aria2c's and curl's rows, each with its command line: one process each for the whole list.
fn queue_peers(
    lab: &Lab,
    clients: &Clients,
    scheme: &str,
    urls: &[String],
    ca: Option<&Path>,
    sha: &[(PathBuf, &str)],
) -> Result<Vec<(Row, Vec<String>)>> {
    let mut peers: Vec<(&str, Vec<String>)> = Vec::new();
    if let Some(aria) = clients.get(Kind::Aria2Default) {
        let list = lab.dir.join(format!("queue-aria2-{scheme}.txt"));
        let body: String = urls
            .iter()
            .zip(sha)
            .map(|(u, (out, _))| {
                let name = out.file_name().unwrap_or_default().to_string_lossy();
                format!("{u}\n  out={name}\n")
            })
            .collect();
        fs::write(&list, body)?;
        let mut argv = vec![
            aria.program.display().to_string(),
            format!("--input-file={}", list.display()),
            "--max-concurrent-downloads=5".into(),
            format!("--dir={}", lab.out.display()),
            "--console-log-level=warn".into(),
            "--summary-interval=0".into(),
            "--download-result=hide".into(),
        ];
        if let Some(ca) = ca {
            argv.push(format!("--ca-certificate={}", ca.display()));
        }
        peers.push(("aria2c -i -j 5", argv));
    }
    if let Some(curl) = clients.get(Kind::Curl) {
        let mut argv = vec![
            curl.program.display().to_string(),
            "-sS".into(),
            "-f".into(),
            "--parallel".into(),
            "--parallel-max".into(),
            "5".into(),
        ];
        if let Some(ca) = ca {
            argv.extend(["--cacert".into(), ca.display().to_string()]);
        }
        for (u, (out, _)) in urls.iter().zip(sha) {
            argv.extend(["-o".into(), out.display().to_string(), u.clone()]);
        }
        peers.push(("curl --parallel", argv));
    }
    Ok(peers
        .into_iter()
        .map(|(name, argv)| {
            let mut shown = display(&argv, lab);
            if shown.len() > 200 {
                shown = format!("{} …", shown.chars().take(200).collect::<String>());
            }
            (Row::new(name, scheme, shown), argv)
        })
        .collect())
}

/// One run of a peer over the whole list.
fn queue_peer_run(
    lab: &Lab,
    argv: &[String],
    sha: &[(PathBuf, &str)],
    row: &mut Row,
    head: &str,
) -> Result<()> {
    lab.clear_out()?;
    row.runs += 1;
    let log = lab.dir.join("client.log");
    let (s, status) = measure::timed(argv, Duration::from_secs(300), &log)?;
    match verify(&status, &log, sha) {
        Ok(()) => {
            row.push("wall", "s", s.wall);
            row.push_opt("cpu", "s", s.cpu);
            row.push_opt("rss", "MB", s.rss_mb);
            row.push("per file", "ms", s.wall / sha.len() as f64 * 1000.0);
            println!("{head}: {:.2} s", s.wall);
        }
        Err(e) => {
            println!("{head}: FAILED: {e}");
            row.failures.push(format!("run {}: {e}", row.runs));
        }
    }
    Ok(())
}

/// Bytes the clients have written into `dir` so far: the allocated blocks of every file in it. Outputs are sparse
/// on tmpfs (sdm sets the length up front, aria2c runs with `--file-allocation=none`), so blocks are the bytes
/// written, to the page. (`/proc/PID/io` rchar would miss them: `recv` on a socket is not counted there.)
fn written(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Seconds since the start and bytes written by then.
type Samples = Vec<(f64, u64)>;

/// Run `argv` and sample the bytes written into `dir` every 100 ms; returns wall, samples and status.
fn sampled(
    argv: &[String],
    dir: &Path,
    timeout: Duration,
    log: &Path,
) -> Result<(f64, Samples, ExitStatus)> {
    let start = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("cannot start {}", argv[0]))?;
    let mut samples = Vec::new();
    let mut next = Duration::ZERO;
    loop {
        let now = start.elapsed();
        if let Some(status) = child.try_wait()? {
            samples.push((now.as_secs_f64(), written(dir)));
            return Ok((now.as_secs_f64(), samples, status));
        }
        if now >= next {
            samples.push((now.as_secs_f64(), written(dir)));
            next += Duration::from_millis(100);
        }
        if now > timeout {
            let _ = child.kill();
            let status = child.wait()?;
            return Ok((start.elapsed().as_secs_f64(), samples, status));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The highest rate over any window of at least 1 s between two samples.
pub fn max_window(samples: &[(f64, u64)]) -> Option<f64> {
    let mut best: Option<f64> = None;
    for (i, &(t0, b0)) in samples.iter().enumerate() {
        if let Some(&(t1, b1)) = samples[i..].iter().find(|(t, _)| t - t0 >= 1.0 - 1e-9) {
            let r = (b1 - b0) as f64 / (t1 - t0);
            best = Some(best.map_or(r, |b: f64| b.max(r)));
        }
    }
    best
}

/// A speed cap of 1 MiB/s and 20 MiB/s over 10 s: the average, and the largest 1 s window.
fn cap_accuracy(
    lab: &Lab,
    clients: &Clients,
    opts: &Options,
    files: &[(u64, TestFile)],
) -> Result<Scenario> {
    let secs = cap_seconds(opts.mode);
    let mut sc = Scenario::new(
        "cap",
        format!("speed cap accuracy: 1 MiB/s and 20 MiB/s for {secs} s"),
        format!(
            "Each client gets a file of cap × {secs} s and its own cap (sdm `--limit`, aria2c \
             `--max-overall-download-limit`, curl `--limit-rate`), 8 connections where it splits. The average is \
             file size / wall time; the windows come from the bytes written so far (allocated blocks of the \
             sparse output in tmpfs) sampled every 100 ms. `avg error` = average / cap − 1; \
             `max 1 s` = largest 1 s window / cap − 1."
        ),
    );
    sc.notes.push(
        "axel is left out: with `-n 8 -s CAP` it did not finish within 6× the capped time in trial runs here."
            .into(),
    );
    println!("bench: {}", sc.title);
    let log = lab.dir.join("client.log");
    for (cap, file) in files {
        let setting = format!("{} MiB/s", cap / MIB);
        for client in clients.pick(&[Kind::Sdm, Kind::Aria2Matched, Kind::Curl]) {
            let out = lab.out.join(&file.name);
            let mut argv = client.argv(&format!("{}/{}", lab.base, file.name), &out, 8, Some(*cap));
            if client.kind == Kind::Aria2Matched {
                // aria2c holds up to 16 MiB in its disk cache; without it the written bytes follow the network.
                argv.insert(1, "--disk-cache=0".into());
            }
            let mut row = Row::new(client.name, &setting, display(&argv, lab));
            for run in 1..=opts.runs {
                lab.clear_out()?;
                row.runs += 1;
                let (wall, samples, status) =
                    sampled(&argv, &lab.out, Duration::from_secs(secs * 6 + 30), &log)?;
                match verify(&status, &log, &[(out.clone(), file.sha256.as_str())]) {
                    Ok(()) => {
                        let avg = file.size as f64 / wall;
                        let win = max_window(&samples).unwrap_or(avg);
                        let capf = *cap as f64;
                        row.push("wall", "s", wall);
                        row.push("avg", "MiB/s", avg / MIB as f64);
                        row.push("avg error", "%", (avg / capf - 1.0) * 100.0);
                        row.push("max 1 s", "%", (win / capf - 1.0) * 100.0);
                        println!(
                            "  {:<18} {setting:<9} run {run}: avg {:+.1} %, max 1 s window {:+.1} %",
                            client.name,
                            (avg / capf - 1.0) * 100.0,
                            (win / capf - 1.0) * 100.0
                        );
                    }
                    Err(e) => {
                        println!("  {} {setting} run {run}: FAILED: {e}", client.name);
                        row.failures.push(format!("run {run}: {e}"));
                    }
                }
            }
            sc.rows.push(row);
        }
    }
    lab.clear_out()?;
    for (cap, _) in files {
        let setting = format!("{} MiB/s", cap / MIB);
        let name = format!("cap accuracy at {setting}");
        let goal = "|avg| ≤ 3 %, no 1 s window > +10 %";
        let row = sc.row("sdm", &setting);
        let avg = row.and_then(|r| r.median("avg error"));
        let worst = row.and_then(|r| r.values("max 1 s").iter().copied().reduce(f64::max));
        sc.targets.push(match (avg, worst) {
            (Some(a), Some(w)) => Target {
                name,
                goal: goal.into(),
                measured: format!(
                    "avg {a:+.1} % (median), worst 1 s window {w:+.1} % (of all runs)"
                ),
                ratio: Some(1.0 + a / 100.0),
                pass: Some(a.abs() <= 3.0 && w <= 10.0),
            },
            _ => unmeasured(&name, goal),
        });
    }
    Ok(sc)
}

/// The service's footprint: idle RSS, RSS during 5 × 8-connection downloads, checkpoint time with 1,000 queued.
fn service(lab: &Lab, clients: &Clients, opts: &Options, file: &TestFile) -> Result<Scenario> {
    let mut sc = Scenario::new(
        "service",
        "the service: idle, busy, and with 1,000 queued downloads",
        format!(
            "Footprint of `sdm serve`. Idle: VmRSS 2 s after start. Busy: 5 downloads at once of {} MiB with 8 \
             connections each (nginx {} MiB/s per connection), peak VmRSS sampled every 50 ms and VmHWM; aria2c \
             downloading the same 5 at once (`-j 5 -x 8 -s 8 -k 1M`) for comparison. Checkpoint: 1,000 downloads \
             (one running at 1 KiB/s, 999 queued), state in a folder on disk; the time from `sdm pause ID` until \
             `state.json` is replaced, and the service's CPU while it checkpoints once a second.",
            file.size / MIB,
            CONN_CAP / MIB
        ),
    );
    println!("bench: {}", sc.title);
    let Some(sdm) = clients.get(Kind::Sdm) else {
        return Ok(sc);
    };
    let mut idle = Row::new("sdm serve", "idle", "SDM_HOME=$HOME_DIR sdm serve");
    let mut busy = Row::new(
        "sdm serve",
        "5 × 8 connections",
        "sdm settings --set max_concurrent=5; sdm add $NGINX/cap/mid.bin -c 8 -o b0.bin; … (5 downloads)",
    );
    let urls: Vec<String> = (0..5)
        .map(|_| format!("{}/cap/{}", lab.base, file.name))
        .collect();
    for run in 1..=opts.runs {
        lab.clear_out()?;
        idle.runs += 1;
        busy.runs += 1;
        let svc = Service::start(&sdm.program, &lab.dir.join("home-svc"), None)?;
        std::thread::sleep(Duration::from_secs(2));
        idle.push_opt("rss", "MB", measure::proc_mem_mb(svc.pid(), "VmRSS"));
        svc.queue_into(&lab.out)?;
        let cpu0 = measure::proc_cpu(svc.pid()).unwrap_or(0.0);
        let start = Instant::now();
        for (i, url) in urls.iter().enumerate() {
            svc.cli(&["add", url, "-c", "8", "-o", &format!("b{i}.bin")])?;
        }
        let mut peak: f64 = 0.0;
        let deadline = Instant::now() + timeout_for(file.size * 5, 40.0 * CONN_CAP as f64);
        let mut outcome = Ok(());
        loop {
            peak = peak.max(measure::proc_mem_mb(svc.pid(), "VmRSS").unwrap_or(0.0));
            let done = (0..5)
                .filter(|i| lab.out.join(format!("b{i}.bin")).is_file())
                .count();
            if done == 5 {
                break;
            }
            if Instant::now() > deadline {
                outcome = Err(format!("only {done} of 5 done"));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let wall = start.elapsed().as_secs_f64();
        let hwm = measure::proc_mem_mb(svc.pid(), "VmHWM");
        let cpu = measure::proc_cpu(svc.pid()).unwrap_or(0.0) - cpu0;
        let sha: Vec<(PathBuf, &str)> = (0..5)
            .map(|i| (lab.out.join(format!("b{i}.bin")), file.sha256.as_str()))
            .collect();
        let outcome =
            outcome.and_then(|()| measure::check_files(&sha).map_err(|e| format!("{e:#}")));
        drop(svc);
        match outcome {
            Ok(()) => {
                busy.push("rss", "MB", peak);
                busy.push_opt("VmHWM", "MB", hwm);
                busy.push("cpu", "s", cpu);
                busy.push("wall", "s", wall);
                println!(
                    "  sdm serve run {run}: busy peak RSS {peak:.1} MB, {cpu:.2} s CPU, {wall:.2} s"
                );
            }
            Err(e) => {
                println!("  sdm serve busy run {run}: FAILED: {e}");
                busy.failures.push(format!("run {run}: {e}"));
            }
        }
    }
    sc.rows.push(idle);
    sc.rows.push(busy);

    // aria2c doing the same five downloads at once, for scale.
    if let Some(aria) = clients.get(Kind::Aria2Matched) {
        let list = lab.dir.join("busy.txt");
        let body: String = urls
            .iter()
            .enumerate()
            .map(|(i, u)| format!("{u}\n  out=b{i}.bin\n"))
            .collect();
        fs::write(&list, body)?;
        let argv = vec![
            aria.program.display().to_string(),
            format!("--input-file={}", list.display()),
            "--max-concurrent-downloads=5".into(),
            "-x8".into(),
            "-s8".into(),
            "-k1M".into(),
            "--file-allocation=none".into(),
            format!("--dir={}", lab.out.display()),
            "--console-log-level=warn".into(),
            "--summary-interval=0".into(),
            "--download-result=hide".into(),
        ];
        let mut row = Row::new("aria2c (matched)", "5 × 8 connections", display(&argv, lab));
        let log = lab.dir.join("client.log");
        let sha: Vec<(PathBuf, &str)> = (0..5)
            .map(|i| (lab.out.join(format!("b{i}.bin")), file.sha256.as_str()))
            .collect();
        for run in 1..=opts.runs {
            lab.clear_out()?;
            row.runs += 1;
            let (s, status) = measure::timed(&argv, Duration::from_secs(300), &log)?;
            match verify(&status, &log, &sha) {
                Ok(()) => {
                    row.push_opt("rss", "MB", s.rss_mb);
                    row.push_opt("cpu", "s", s.cpu);
                    row.push("wall", "s", s.wall);
                    println!("  aria2c 5 × 8 run {run}: {:.2} s", s.wall);
                }
                Err(e) => row.failures.push(format!("run {run}: {e}")),
            }
        }
        sc.rows.push(row);
    }

    // The checkpoint with 1,000 downloads, state on disk (fsync is part of the cost).
    let home = std::env::temp_dir().join(format!("sdm-bench-home-{}", std::process::id()));
    let svc = Service::start(&sdm.program, &home, None)?;
    lab.clear_out()?;
    let out = lab.out.display().to_string();
    svc.cli(&[
        "settings",
        "--set",
        "max_concurrent=1",
        "--set",
        &format!("download_dir={out}"),
    ])?;
    let slow_url = format!("{}/slow/{}", lab.base, file.name);
    let count = if opts.mode == Mode::Full { 1000 } else { 300 };
    let start = Instant::now();
    let mut ids = Vec::new();
    for i in 0..count {
        ids.push(svc.cli(&["add", &slow_url, "-o", &format!("s{i:04}.bin")])?);
    }
    println!(
        "  added {count} downloads in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    let state = home.join("state.json");
    let size_kb = fs::metadata(&state)
        .map(|m| m.len() as f64 / 1000.0)
        .unwrap_or(0.0);
    let mut ckpt = Row::new(
        "sdm serve",
        format!("{count} downloads"),
        "sdm pause ID / sdm resume ID on a queued download; time until state.json is replaced",
    );
    ckpt.runs = opts.runs * 2;
    let cpu0 = measure::proc_cpu(svc.pid()).unwrap_or(0.0);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let steady = (measure::proc_cpu(svc.pid()).unwrap_or(0.0) - cpu0) / t0.elapsed().as_secs_f64();
    let target = ids.get(count / 2).cloned().unwrap_or_else(|| "2".into());
    for k in 0..opts.runs * 2 {
        // Start right after a periodic checkpoint (one a second while a download runs), and past its 50 ms pause,
        // so the next replacement of state.json is the one our status change causes.
        let ino = |p: &Path| fs::metadata(p).map(|m| m.ino()).unwrap_or(0);
        let seen = ino(&state);
        let wait = Instant::now();
        while ino(&state) == seen && wait.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_micros(500));
        }
        std::thread::sleep(Duration::from_millis(150));
        let before = ino(&state);
        let verb = if k % 2 == 0 { "pause" } else { "resume" };
        let t = Instant::now();
        svc.cli(&[verb, &target])?;
        while ino(&state) == before && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_micros(200));
        }
        ckpt.push("checkpoint", "ms", t.elapsed().as_secs_f64() * 1000.0);
    }
    ckpt.push("state.json", "kB", size_kb);
    ckpt.push("CPU, 1 s checkpoints", "%", steady * 100.0);
    ckpt.push_opt("rss", "MB", measure::proc_mem_mb(svc.pid(), "VmRSS"));
    drop(svc);
    let _ = fs::remove_dir_all(&home);
    lab.clear_out()?;
    sc.rows.push(ckpt);
    sc.notes.push(
        "The checkpoint time includes the `sdm pause`/`sdm resume` round trip (a new process and a socket \
         connection) and the fsync of state.json on this VM's disk."
            .into(),
    );
    Ok(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_window_of_at_least_one_second() {
        let samples = [(0.0, 0), (0.5, 100), (1.0, 300), (1.5, 400), (2.0, 450)];
        // 0.0→1.0: 300/s; 0.5→1.5: 300/s; 1.0→2.0: 150/s.
        assert_eq!(max_window(&samples), Some(300.0));
        assert_eq!(max_window(&samples[..2]), None);
    }
}
