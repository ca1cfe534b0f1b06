//! The outputs: `bench/results.json` (every value of every run), `BENCHMARKS.md` (tables and targets) and the chart
//! `docs/bench.png` (drawn by `bench/chart.py` from the JSON). `--quick` writes them under `target/bench-quick/`, and a
//! partial full run (`--only`, or `--runs` under 5) under `target/bench-partial/`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::measure::{Row, stats};
use super::scenarios::Scenario;
use super::{Mode, Options};
use crate::tools::{self, Installed};

/// Everything after this line of BENCHMARKS.md is kept when the file is rewritten (analysis written by hand).
const KEEP_MARKER: &str = "<!-- Written by hand below this line; `cargo xtask bench` keeps it. -->";

/// Where and on what the run happened.
pub struct Machine {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cores: String,
    pub memory: String,
    pub load: String,
    pub versions: Vec<(String, String)>,
}

impl Machine {
    pub fn describe(sdm: &Path, load: &str) -> Machine {
        let first_line = |cmd: &mut Command| {
            cmd.output()
                .ok()
                .map(|o| {
                    let text = if o.stdout.is_empty() {
                        o.stderr
                    } else {
                        o.stdout
                    };
                    String::from_utf8_lossy(&text)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_owned()
                })
                .unwrap_or_else(|| "not installed".into())
        };
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let mem_kb: f64 = field(&meminfo, "MemTotal")
            .trim_end_matches(" kB")
            .parse()
            .unwrap_or(0.0);
        let mut versions = vec![(
            "sdm".to_owned(),
            first_line(Command::new(sdm).arg("--version")),
        )];
        for (name, prog, arg) in [
            ("aria2c", "aria2c", "--version"),
            ("axel", "axel", "--version"),
            ("curl", "curl", "--version"),
            ("nginx", "nginx", "-v"),
        ] {
            let v = match super::find_program(prog) {
                Some(p) => first_line(Command::new(p).arg(arg)),
                None => "not installed".into(),
            };
            versions.push((name.to_owned(), v));
        }
        Machine {
            date: tools::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
                .unwrap_or_default(),
            kernel: tools::output(Command::new("uname").args(["-srm"])).unwrap_or_default(),
            cpu: field(&cpuinfo, "model name"),
            cores: tools::output(&mut Command::new("nproc")).unwrap_or_default(),
            memory: format!("{:.1} GiB", mem_kb / 1024.0 / 1024.0),
            load: load.trim().to_owned(),
            versions,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "date": self.date,
            "kernel": self.kernel,
            "cpu": self.cpu,
            "cores": self.cores,
            "memory": self.memory,
            "loadavg_at_start": self.load,
            "versions": self.versions.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

fn row_json(r: &Row) -> Value {
    let metrics: serde_json::Map<String, Value> = r
        .metrics
        .iter()
        .map(|m| {
            let s = stats(&m.values);
            (
                m.name.to_owned(),
                json!({
                    "unit": m.unit,
                    "values": m.values,
                    "median": s.map(|s| s.median),
                    "min": s.map(|s| s.min),
                    "max": s.map(|s| s.max),
                }),
            )
        })
        .collect();
    json!({
        "client": r.client,
        "setting": r.setting,
        "command": r.command,
        "runs": r.runs,
        "failures": r.failures,
        "metrics": metrics,
    })
}

fn scenario_json(s: &Scenario) -> Value {
    json!({
        "key": s.key,
        "title": s.title,
        "what": s.what,
        "notes": s.notes,
        "rows": s.rows.iter().map(row_json).collect::<Vec<_>>(),
        "targets": s.targets.iter().map(|t| json!({
            "name": t.name,
            "goal": t.goal,
            "measured": t.measured,
            "ratio": t.ratio,
            "pass": t.pass,
        })).collect::<Vec<_>>(),
    })
}

/// A number with as many decimals as its size deserves.
fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One scenario as a markdown table: median (min–max) of every metric, per client and setting.
fn table(s: &Scenario) -> String {
    let mut names: Vec<(&str, &str)> = Vec::new();
    for r in &s.rows {
        for m in &r.metrics {
            if !names.iter().any(|(n, _)| *n == m.name) {
                names.push((m.name, m.unit));
            }
        }
    }
    let mut t = String::from("| client | setting |");
    for (n, u) in &names {
        let _ = write!(t, " {n} ({u}) |");
    }
    t.push_str(" ok runs |\n|---|---|");
    for _ in &names {
        t.push_str("---:|");
    }
    t.push_str("---:|\n");
    for r in &s.rows {
        let _ = write!(t, "| {} | {} |", r.client, r.setting);
        for (n, _) in &names {
            let cell = stats(r.values(n))
                .map(|st| {
                    if st.min == st.max {
                        num(st.median)
                    } else {
                        format!("{} ({}–{})", num(st.median), num(st.min), num(st.max))
                    }
                })
                .unwrap_or_else(|| "–".into());
            let _ = write!(t, " {cell} |");
        }
        let ok = r.runs - r.failures.len();
        let _ = writeln!(t, " {ok}/{} |", r.runs);
    }
    t
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "**pass**",
        Some(false) => "**FAIL**",
        None => "not measured",
    }
}

/// The tables on the terminal (the smoke run writes no files).
pub fn print_tables(scenarios: &[Scenario]) {
    for s in scenarios {
        println!("\n{}\n\n{}", s.title, table(s));
    }
}

pub fn write(
    opts: &Options,
    machine: &Machine,
    scenarios: &[Scenario],
    installed: &Installed,
) -> Result<()> {
    let root = tools::root();
    // Only a whole run replaces the committed report; `--only` or fewer runs would leave it half a run.
    let (md, json_path, png) = if opts.mode == Mode::Full && opts.only.is_empty() && opts.runs >= 5
    {
        (
            root.join("BENCHMARKS.md"),
            root.join("bench/results.json"),
            root.join("docs/bench.png"),
        )
    } else {
        let d = root.join(if opts.mode == Mode::Full {
            "target/bench-partial"
        } else {
            "target/bench-quick"
        });
        (
            d.join("BENCHMARKS.md"),
            d.join("results.json"),
            d.join("bench.png"),
        )
    };
    for p in [&md, &json_path, &png] {
        if let Some(d) = p.parent() {
            fs::create_dir_all(d)?;
        }
    }
    let doc = json!({
        "mode": format!("{:?}", opts.mode).to_lowercase(),
        "runs": opts.runs,
        "machine": machine.to_json(),
        "installed": installed.0,
        "scenarios": scenarios.iter().map(scenario_json).collect::<Vec<_>>(),
    });
    fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    println!("bench: wrote {}", json_path.display());

    let chart = draw_chart(&json_path, &png);
    let kept = fs::read_to_string(&md)
        .ok()
        .and_then(|old| old.split_once(KEEP_MARKER).map(|(_, rest)| rest.to_owned()))
        .unwrap_or_else(|| "\n".into());
    let text = markdown(opts, machine, scenarios, chart.is_ok(), &png, &md);
    fs::write(&md, format!("{text}\n{KEEP_MARKER}{kept}"))
        .with_context(|| format!("cannot write {}", md.display()))?;
    println!("bench: wrote {}", md.display());
    match chart {
        Ok(()) => println!("bench: wrote {}", png.display()),
        Err(e) => println!("bench: no chart: {e:#}"),
    }
    println!();
    for s in scenarios {
        for t in &s.targets {
            println!(
                "target {:<36} {:<40} {}  {}",
                t.name,
                t.goal,
                verdict(t.pass),
                t.measured
            );
        }
    }
    Ok(())
}

/// Run `bench/chart.py` (matplotlib; installed with pip when missing).
fn draw_chart(json_path: &Path, png: &Path) -> Result<()> {
    let python = tools::which("python3").context("python3 not found")?;
    let script = tools::root().join("bench/chart.py");
    let has_mpl = Command::new(&python)
        .args(["-c", "import matplotlib"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_mpl {
        println!("bench: installing matplotlib (pip) for the chart");
        tools::run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "matplotlib"]))?;
    }
    tools::run(Command::new(&python).arg(&script).arg(json_path).arg(png))
}

fn rel(p: &Path, from: &Path) -> PathBuf {
    let base = from.parent().unwrap_or(Path::new("."));
    p.strip_prefix(base)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| p.to_path_buf())
}

fn markdown(
    opts: &Options,
    m: &Machine,
    scenarios: &[Scenario],
    chart: bool,
    png: &Path,
    md: &Path,
) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "# Benchmarks\n");
    let _ = writeln!(
        t,
        "Written by `cargo xtask bench{}` on {} — rerun it to reproduce (it installs nginx-light, aria2, axel, curl, \
         openssl, iproute2 and time from Debian when missing, starts its own nginx, and cleans up after itself). Every \
         number is the **median (min–max) of {} runs** (the latency scenario {}× as many, in rounds); every \
         output file was checked against the source's sha256 (failed runs are counted in `ok runs` and never enter \
         a number). Clients run one at a time (where they are compared with each other, in turns: one run each per \
         round); files are served from and written to tmpfs (`/dev/shm`), so the disk is out of the picture.\n",
        if opts.mode == Mode::Quick {
            " --quick"
        } else {
            ""
        },
        m.date,
        opts.runs,
        super::scenarios::LATENCY_RUNS_FACTOR
    );
    let _ = writeln!(t, "## Machine\n");
    let _ = writeln!(
        t,
        "- {} × {}, {} RAM, {}",
        m.cores, m.cpu, m.memory, m.kernel
    );
    let _ = writeln!(t, "- load average at start: {}", m.load);
    for (k, v) in &m.versions {
        let _ = writeln!(t, "- {k}: {v}");
    }
    let _ = writeln!(
        t,
        "\nAbsolute times on this shared 2-core VM are noisy; the ratios between clients measured in the same run \
         are what the targets use.\n"
    );
    if chart {
        let _ = writeln!(t, "![benchmark chart]({})\n", rel(png, md).display());
    }
    let _ = writeln!(t, "## Targets (issues 4 and 18)\n");
    let _ = writeln!(
        t,
        "| target | goal | measured | ratio | verdict |\n|---|---|---|---:|---|"
    );
    for s in scenarios {
        for g in &s.targets {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} |",
                g.name,
                g.goal,
                g.measured,
                g.ratio.map_or("–".into(), |r| format!("{r:.2}")),
                verdict(g.pass)
            );
        }
    }
    let _ = writeln!(t);
    for s in scenarios {
        let _ = writeln!(t, "## {}\n\n{}\n\n{}", s.title, s.what, table(s));
        for n in &s.notes {
            let _ = writeln!(t, "- {n}");
        }
        let failures: Vec<String> = s
            .rows
            .iter()
            .flat_map(|r| {
                r.failures
                    .iter()
                    .map(move |f| format!("{} {}: {f}", r.client, r.setting))
            })
            .collect();
        if !failures.is_empty() {
            let _ = writeln!(t, "\nFailed runs:\n");
            for f in failures {
                let _ = writeln!(t, "- {f}");
            }
        }
        let _ = writeln!(t, "\n<details><summary>commands</summary>\n");
        let mut seen = Vec::new();
        for r in &s.rows {
            if !seen.contains(&r.command) {
                let _ = writeln!(t, "- `{}`", r.command.replace('`', "'"));
                seen.push(r.command.clone());
            }
        }
        let _ = writeln!(t, "\n</details>\n");
    }
    t
}
