//! Running a client once and measuring it, and the rows of measurements a scenario reports.
//!
//! CPU and peak RSS come from GNU time (`/usr/bin/time -f '%U %S %M'`), which reads them from `wait4` when its child
//! exits, so they cover exactly that process (and anything it waited for). Wall time is ours, around the whole run.
//! Without GNU time only wall time is measured.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One run of one client.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub wall: f64,
    /// User + system CPU seconds.
    pub cpu: Option<f64>,
    /// User CPU seconds alone: the client's own work (the system part is mostly the kernel copying bytes).
    pub user: Option<f64>,
    /// Peak resident set size in MB (10^6 bytes).
    pub rss_mb: Option<f64>,
}

/// Run `argv` to completion under GNU time (when installed) and coreutils' `timeout`; its stderr goes to `log`.
pub fn timed(argv: &[String], timeout: Duration, log: &Path) -> Result<(Sample, ExitStatus)> {
    let time_out = log.with_extension("time");
    let gnu_time = Path::new("/usr/bin/time");
    let mut cmd = if gnu_time.is_file() {
        let mut c = Command::new(gnu_time);
        c.args(["-f", "%U %S %M", "-o"])
            .arg(&time_out)
            .arg("timeout");
        c
    } else {
        Command::new("timeout")
    };
    cmd.args(["-s", "KILL", &timeout.as_secs().max(1).to_string()])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?);
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", argv[0]))?;
    let wall = start.elapsed().as_secs_f64();
    let (cpu, user, rss_mb) = parse_time(&fs::read_to_string(&time_out).unwrap_or_default());
    let _ = fs::remove_file(&time_out);
    Ok((
        Sample {
            wall,
            cpu,
            user,
            rss_mb,
        },
        status,
    ))
}

/// GNU time's last line: "user sys maxrss_kib" (a failed command adds a line before it), as (user+sys, user, MB).
fn parse_time(text: &str) -> (Option<f64>, Option<f64>, Option<f64>) {
    let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) else {
        return (None, None, None);
    };
    let f: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match f[..] {
        [user, sys, kib] => (Some(user + sys), Some(user), Some(kib * 1024.0 / 1e6)),
        _ => (None, None, None),
    }
}

/// The last lines of a client's log, for a failure message.
pub fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    lines[start..].join(" | ").chars().take(400).collect()
}

/// User+system CPU seconds of a live process, from `/proc/PID/stat` (clock ticks of 1/100 s).
pub fn proc_cpu(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// CPU seconds of this process's children that have been waited for (`/proc/self/stat` cutime + cstime).
pub fn children_cpu() -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (get(13) + get(14)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux architecture the bench runs on; getconf confirms it when present.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A `/proc/PID/status` field in kB (VmRSS, VmHWM), as MB.
pub fn proc_mem_mb(pid: u32, field: &str) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0 / 1e6)
}

/// Check the sha256 of several files in one `sha256sum` call; the first mismatch is the error.
pub fn check_files(files: &[(PathBuf, &str)]) -> Result<()> {
    for chunk in files.chunks(256) {
        let out = Command::new("sha256sum")
            .args(chunk.iter().map(|(p, _)| p))
            .output()
            .context("cannot run sha256sum")?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "HASH  PATH" per readable file; a missing file only gets a line on stderr.
        let sums: std::collections::HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once("  "))
            .map(|(hash, path)| (path, hash))
            .collect();
        for (path, want) in chunk {
            match sums.get(path.to_string_lossy().as_ref()) {
                Some(got) if got == want => {}
                Some(got) => bail!("{}: sha256 {got}, expected {want}", path.display()),
                None => bail!("{}: missing or unreadable", path.display()),
            }
        }
    }
    Ok(())
}

/// One measured quantity of a row, one value per successful run.
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub values: Vec<f64>,
}

/// One client in one setting of a scenario.
#[derive(Debug, Clone)]
pub struct Row {
    pub client: String,
    pub setting: String,
    /// The command line, with the lab's paths and port replaced by placeholders.
    pub command: String,
    pub metrics: Vec<Metric>,
    /// One line per failed run (wrong sha256, exit status, timeout).
    pub failures: Vec<String>,
    pub runs: usize,
}

impl Row {
    pub fn new(client: &str, setting: impl Into<String>, command: impl Into<String>) -> Row {
        Row {
            client: client.to_owned(),
            setting: setting.into(),
            command: command.into(),
            metrics: Vec::new(),
            failures: Vec::new(),
            runs: 0,
        }
    }

    /// Add one value of a metric (created on first use, in order of first use).
    pub fn push(&mut self, name: &'static str, unit: &'static str, value: f64) {
        match self.metrics.iter_mut().find(|m| m.name == name) {
            Some(m) => m.values.push(value),
            None => self.metrics.push(Metric {
                name,
                unit,
                values: vec![value],
            }),
        }
    }

    pub fn push_opt(&mut self, name: &'static str, unit: &'static str, value: Option<f64>) {
        if let Some(v) = value {
            self.push(name, unit, v);
        }
    }

    /// Every run's value of metric `name` (none if it was never measured).
    pub fn values(&self, name: &str) -> &[f64] {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map_or(&[], |m| &m.values)
    }

    pub fn median(&self, name: &str) -> Option<f64> {
        stats(self.values(name)).map(|s| s.median)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn stats(values: &[f64]) -> Option<Stats> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Stats {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnu_time_output_with_and_without_a_failure_line() {
        let (cpu, user, rss) = parse_time("0.20 0.05 12000\n");
        assert!((cpu.unwrap() - 0.25).abs() < 1e-9);
        assert_eq!(user, Some(0.20));
        assert!((rss.unwrap() - 12.288).abs() < 1e-9);
        let failed = "Command exited with non-zero status 1\n0.00 0.01 3000\n";
        assert_eq!(parse_time(failed).0, Some(0.01));
        assert_eq!(parse_time(""), (None, None, None));
    }

    #[test]
    fn a_wrong_or_missing_file_fails_the_check() {
        let dir = std::env::temp_dir().join(format!("sdm-bench-check-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a");
        fs::write(&f, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(check_files(&[(f.clone(), abc)]).is_ok());
        assert!(check_files(&[(f.clone(), &abc.replace('b', "c"))]).is_err());
        assert!(check_files(&[(dir.join("missing"), abc)]).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn median_of_odd_and_even_series() {
        let s = stats(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(stats(&[]).is_none());
    }
}
