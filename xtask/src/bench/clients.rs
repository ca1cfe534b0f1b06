//! The clients under test and their command lines.

use std::path::{Path, PathBuf};

use super::{Mode, Options, find_program};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `sdm get URL -o PATH -c N`.
    Sdm,
    /// The same with `--no-splice`: every body through user space, as before splice(2) (the loopback scenario's
    /// before/after).
    SdmNoSplice,
    /// `sdm get` of another build (`--baseline`), for a before/after in one run.
    SdmBaseline,
    /// aria2c as shipped: one connection per server, `--split 5`, `--min-split-size 20M`, preallocation.
    Aria2Default,
    /// aria2c with only `-x N` set, the command of Hydra's published benchmark: `--split` stays 5 and
    /// `--min-split-size` 20M, so it opens at most 5 connections.
    Aria2X,
    /// aria2c set up like sdm: `-x N -s N -k 1M --file-allocation=none`.
    Aria2Matched,
    /// `axel -n N`.
    Axel,
    /// curl: one connection.
    Curl,
    /// The link's own bound: `cargo xtask bench --bound-read URL N SIZE` (see `bound.rs`), N ranged `GET`s whose
    /// bytes are discarded. Not a client of `Clients::all`: only the latency scenario runs it.
    Bound,
}

#[derive(Debug, Clone)]
pub struct Client {
    pub kind: Kind,
    pub name: &'static str,
    pub program: PathBuf,
}

impl Kind {
    /// A build of sdm rather than a peer.
    pub fn is_sdm(self) -> bool {
        matches!(self, Kind::Sdm | Kind::SdmNoSplice | Kind::SdmBaseline)
    }
}

impl Client {
    /// The bound reader: this xtask binary with `bench --bound-read`.
    pub fn bound() -> anyhow::Result<Client> {
        Ok(Client {
            kind: Kind::Bound,
            name: "link bound",
            program: std::env::current_exe()?,
        })
    }

    /// The command line that downloads `url` to `out` with `n` connections and an optional cap in bytes per second.
    pub fn argv(&self, url: &str, out: &Path, n: u32, limit: Option<u64>) -> Vec<String> {
        let mut v = vec![self.program.to_string_lossy().into_owned()];
        let out_s = out.to_string_lossy().into_owned();
        let n_s = n.to_string();
        match self.kind {
            Kind::Sdm | Kind::SdmNoSplice | Kind::SdmBaseline => {
                v.extend([
                    "get".into(),
                    url.into(),
                    "-o".into(),
                    out_s,
                    "-c".into(),
                    n_s,
                ]);
                if self.kind == Kind::SdmNoSplice {
                    v.push("--no-splice".into());
                }
                if let Some(l) = limit {
                    v.extend(["--limit".into(), l.to_string()]);
                }
            }
            Kind::Aria2Default | Kind::Aria2X | Kind::Aria2Matched => {
                let dir = out.parent().unwrap_or(Path::new("."));
                let name = out.file_name().unwrap_or_default();
                v.extend([
                    format!("--dir={}", dir.display()),
                    format!("--out={}", name.to_string_lossy()),
                    "--console-log-level=warn".into(),
                    "--summary-interval=0".into(),
                    "--download-result=hide".into(),
                ]);
                if self.kind != Kind::Aria2Default {
                    v.push(format!("--max-connection-per-server={n}"));
                }
                if self.kind == Kind::Aria2Matched {
                    v.extend([
                        format!("--split={n}"),
                        "--min-split-size=1M".into(),
                        "--file-allocation=none".into(),
                    ]);
                }
                if let Some(l) = limit {
                    v.push(format!("--max-overall-download-limit={l}"));
                }
                v.push(url.into());
            }
            Kind::Axel => {
                v.extend(["-q".into(), "-n".into(), n_s, "-o".into(), out_s]);
                if let Some(l) = limit {
                    v.extend(["-s".into(), l.to_string()]);
                }
                v.push(url.into());
            }
            Kind::Bound => {
                // The size is the job's to add: it is not part of a download's command line.
                v.extend(["bench".into(), "--bound-read".into(), url.into(), n_s]);
            }
            Kind::Curl => {
                v.extend(["-sS".into(), "-f".into(), "-o".into(), out_s]);
                if let Some(l) = limit {
                    v.extend(["--limit-rate".into(), l.to_string()]);
                }
                v.push(url.into());
            }
        }
        v
    }

    /// `argv` (from [`Client::argv`]) made to trust the CA at `ca`, for an https URL: sdm through `SSL_CERT_FILE`
    /// (its verifier reads the system's store, which that variable replaces), aria2c and curl through their options.
    /// axel has no such option: `None`.
    pub fn trusting(&self, mut argv: Vec<String>, ca: &Path) -> Option<Vec<String>> {
        let ca_s = ca.to_string_lossy();
        match self.kind {
            Kind::Sdm | Kind::SdmNoSplice | Kind::SdmBaseline => {
                argv.splice(0..0, ["env".into(), format!("SSL_CERT_FILE={ca_s}")]);
            }
            Kind::Aria2Default | Kind::Aria2X | Kind::Aria2Matched => {
                argv.insert(1, format!("--ca-certificate={ca_s}"));
            }
            Kind::Curl => {
                argv.splice(1..1, ["--cacert".into(), ca_s.into_owned()]);
            }
            Kind::Axel | Kind::Bound => return None,
        }
        Some(argv)
    }

    /// Connections this client actually opens when asked for `n`.
    pub fn connections(&self, n: u32) -> u32 {
        match self.kind {
            Kind::Aria2Default | Kind::Curl => 1,
            Kind::Aria2X => n.min(5),
            _ => n,
        }
    }
}

pub struct Clients {
    pub all: Vec<Client>,
}

impl Clients {
    /// sdm and every peer that is installed (`--smoke`: sdm and aria2c matched only).
    pub fn find(sdm: &Path, opts: &Options) -> Clients {
        let mut all = vec![Client {
            kind: Kind::Sdm,
            name: "sdm",
            program: sdm.to_path_buf(),
        }];
        if opts.mode != Mode::Smoke {
            all.push(Client {
                kind: Kind::SdmNoSplice,
                name: "sdm --no-splice",
                program: sdm.to_path_buf(),
            });
        }
        if let Some(program) = &opts.baseline {
            all.push(Client {
                kind: Kind::SdmBaseline,
                name: "sdm (baseline)",
                program: program.clone(),
            });
        }
        let peers: &[(Kind, &str, &str)] = if opts.mode == Mode::Smoke {
            &[(Kind::Aria2Matched, "aria2c (matched)", "aria2c")]
        } else {
            &[
                (Kind::Aria2Default, "aria2c (defaults)", "aria2c"),
                (Kind::Aria2X, "aria2c -x N", "aria2c"),
                (Kind::Aria2Matched, "aria2c (matched)", "aria2c"),
                (Kind::Axel, "axel", "axel"),
                (Kind::Curl, "curl", "curl"),
            ]
        };
        for (kind, name, program) in peers {
            if let Some(program) = find_program(program) {
                all.push(Client {
                    kind: *kind,
                    name,
                    program,
                });
            } else {
                println!("bench: {program} not installed: {name} is left out");
            }
        }
        Clients { all }
    }

    pub fn get(&self, kind: Kind) -> Option<&Client> {
        self.all.iter().find(|c| c.kind == kind)
    }

    /// The installed clients among `kinds`, in that order.
    pub fn pick(&self, kinds: &[Kind]) -> Vec<&Client> {
        kinds.iter().filter_map(|k| self.get(*k)).collect()
    }
}
