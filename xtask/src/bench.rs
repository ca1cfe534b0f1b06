//! `cargo xtask bench`: `sdm get` and the service side by side with aria2c, axel and curl, on this machine, in one run
//! (issue 4; the HTTPS scenario: issue 18).
//!
//! # Layout
//! - [`lab`]: the test bed: test files in tmpfs, our own nginx (own config and prefix, ports on 127.0.0.1, a TLS 1.3
//!   listener with a throwaway CA when openssl is installed), an optional network namespace behind a delaying, lossy
//!   link, and the cleanup of all of it when dropped.
//! - [`wire`]: that link, a userspace netem between two TUN devices (this kernel has no `sch_netem`).
//! - [`measure`]: running one client once: wall time, user+sys CPU and peak RSS (GNU time's `wait4`), the output's
//!   sha256, and the median / min–max of a series.
//! - [`bound`]: the link's own bound, a minimal reader of N ranged connections (the latency scenario's yardstick).
//! - [`clients`]: the command line of each client for a download, a connection count and a speed cap.
//! - [`scenarios`]: one function per scenario of issues 4 and 18, each returning rows of measurements.
//! - [`report`]: `bench/results.json`, `BENCHMARKS.md` and the chart `docs/bench.png` (drawn by `bench/chart.py`).
//!
//! **Invariant:** every output file is checked against the source's sha256; a run with a wrong file is a failure and
//! never a number.

mod bound;
mod clients;
mod lab;
mod measure;
mod report;
mod scenarios;
pub mod wire;

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::tools::{self, Installed};

const USAGE: &str = "\
usage: cargo xtask bench [--quick | --smoke] [--runs N] [--only NAME,...] [--no-build] [--keep] [--baseline SDM]

  (default)   every scenario of issue 4, 5 runs each (latency: 10, in rounds); writes BENCHMARKS.md,
              bench/results.json, docs/bench.png
              (with --only or --runs under 5: under target/bench-partial/ instead)
  --quick     smaller files and 2 runs; writes the same files under target/bench-quick/
  --smoke     16 MiB from loopback over http and https, 1 run, sdm (+ aria2c if installed); fails only if
              sdm's output is wrong
  --runs N    runs per client and scenario
  --only      scenarios to run: loopback, https, capped, latency, tail, queue, cap, service
  --no-build  use target/release/sdm as it is
  --keep      keep the lab folder (nginx logs, configs) in /dev/shm for a look afterwards
  --baseline  another sdm binary (an older build) measured beside this one as \"sdm (baseline)\" in the
              loopback and capped scenarios: a before/after in one run
";

/// How much to measure.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Full,
    Quick,
    Smoke,
}

pub struct Options {
    pub mode: Mode,
    /// Runs per client and scenario.
    pub runs: usize,
    /// Scenario names to run; empty means all.
    pub only: Vec<String>,
    /// Skip `cargo build --release -p sdm`.
    pub no_build: bool,
    /// Leave the lab folder in place (its nginx is still stopped).
    pub keep: bool,
    /// An older sdm to measure beside this one.
    pub baseline: Option<std::path::PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut mode = Mode::Full;
        let mut runs = None;
        let mut only = Vec::new();
        let mut no_build = false;
        let mut baseline = None;
        let mut keep = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => mode = Mode::Quick,
                "--smoke" => mode = Mode::Smoke,
                "--no-build" => no_build = true,
                "--keep" => keep = true,
                "--baseline" => {
                    let path = it
                        .next()
                        .context("--baseline needs the path of an sdm binary")?;
                    baseline = Some(std::path::PathBuf::from(path));
                }
                "--runs" => {
                    let n = it.next().context("--runs needs a number")?;
                    runs = Some(
                        n.parse()
                            .with_context(|| format!("--runs {n}: not a number"))?,
                    );
                }
                "--only" => {
                    let names = it.next().context("--only needs scenario names")?;
                    only.extend(names.split(',').map(str::to_owned));
                }
                "-h" | "--help" => {
                    print!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown bench option `{other}`\n\n{USAGE}"),
            }
        }
        let runs = runs.unwrap_or(match mode {
            Mode::Full => 5,
            Mode::Quick => 2,
            Mode::Smoke => 1,
        });
        if runs == 0 {
            bail!("--runs must be at least 1");
        }
        Ok(Options {
            mode,
            runs,
            only,
            no_build,
            keep,
            baseline,
        })
    }

    /// Whether the scenario `name` is selected.
    pub fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

pub fn run(args: &[String]) -> Result<()> {
    // Not for people: the latency scenario runs the link's bound reader as a client of its own.
    if let Some(("--bound-read", rest)) = args.split_first().map(|(a, r)| (a.as_str(), r)) {
        return bound::main(rest);
    }
    let opts = Options::parse(args)?;
    let started = Instant::now();
    let mut installed = Installed::default();
    ensure_packages(&opts, &mut installed)?;
    let sdm = tools::root().join("target/release/sdm");
    if !opts.no_build {
        tools::run(tools::cargo().args(["build", "--release", "-p", "sdm"]))?;
    }
    if !sdm.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p sdm`",
            sdm.display()
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bench: mode {:?}, {} run(s) each, load {}",
        opts.mode,
        opts.runs,
        load.trim()
    );

    let mut lab = lab::Lab::new(&opts)?;
    // Measure a private copy: others may rebuild target/release/sdm while a long run is going.
    let sdm_copy = lab.dir.join("sdm");
    std::fs::copy(&sdm, &sdm_copy).with_context(|| format!("cannot copy {}", sdm.display()))?;
    let clients = clients::Clients::find(&sdm_copy, &opts);
    let scenarios = scenarios::run_all(&mut lab, &clients, &opts)?;
    drop(lab);

    if opts.mode == Mode::Smoke {
        report::print_tables(&scenarios);
        scenarios::check_smoke(&scenarios)?;
        println!(
            "bench: smoke passed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    } else {
        let machine = report::Machine::describe(&sdm, &load);
        report::write(&opts, &machine, &scenarios, &installed)?;
    }
    if !installed.0.is_empty() {
        println!("bench: installed {}", installed.0.join(", "));
    }
    Ok(())
}

/// The Debian packages a mode needs, as (command that proves it is there, package).
fn needed(mode: Mode) -> Vec<(&'static str, &'static str)> {
    // openssl makes the https listener's certificate, which the smoke's https row needs too.
    let mut v = vec![("nginx", "nginx-light"), ("openssl", "openssl")];
    if mode != Mode::Smoke {
        v.extend([
            ("aria2c", "aria2"),
            ("axel", "axel"),
            ("curl", "curl"),
            ("ip", "iproute2"),
            ("tc", "iproute2"),
            ("/usr/bin/time", "time"),
        ]);
    }
    v
}

/// A command on PATH or in the sbin folders (nginx lives in /usr/sbin, which a non-root PATH may lack).
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    if name.starts_with('/') {
        let p = std::path::PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    tools::which(name).or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(name))
            .find(|p| p.is_file())
    })
}

/// Install the missing packages with apt-get when root; otherwise say what is missing and go on without it.
fn ensure_packages(opts: &Options, installed: &mut Installed) -> Result<()> {
    let mut missing: Vec<&str> = needed(opts.mode)
        .into_iter()
        .filter(|(cmd, _)| find_program(cmd).is_none())
        .map(|(_, pkg)| pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !tools::is_root() || tools::which("apt-get").is_none() {
        let nginx = missing.contains(&"nginx-light");
        println!(
            "bench: missing {} (run as root on Debian to install them)",
            missing.join(" ")
        );
        if nginx {
            bail!("nginx is required: apt-get install nginx-light");
        }
        return Ok(());
    }
    installed.0.push(format!("{} (apt-get)", missing.join(" ")));
    println!("bench: installing {} with apt-get", missing.join(" "));
    tools::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    // RUNLEVEL=1 keeps invoke-rc.d from starting the packaged nginx service: the bench runs its own.
    tools::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("RUNLEVEL", "1"),
    )
}
