//! The fault suite's side of the sandbox (`sdm_tests::harness`): a connection to its service through the `sdm`
//! library's client, the requests the tests repeat (list, add, wait for a state), and a seeded random number
//! generator.
//!
//! ```text
//! let mut sdm = Sandbox::new();
//! let mut client = sdm.start_and_connect().await;
//! let id = add_file(&mut client, &file, Some(4)).await;
//! sdm.kill();                        // SIGKILL, as a crash would
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use protocol::{Command as Cmd, SettingsPatch, SettingsResult};
use sdm::client::{Client, ClientError};
use sdm_tests::harness::Sandbox;

/// A sandbox's service, through the `sdm` library's client (which the harness, shared with native-host's own tests,
/// cannot use).
pub trait Connect {
    /// A request/reply connection to the running service.
    async fn client(&self) -> Client;
    /// [`Sandbox::start`] the service (from async code: the wait blocks in place) and connect to it.
    async fn start_and_connect(&mut self) -> Client;
}

impl Connect for Sandbox {
    async fn client(&self) -> Client {
        let stream = tokio::net::UnixStream::connect(self.socket())
            .await
            .expect("connect to the service's socket");
        Client::new(stream)
    }

    async fn start_and_connect(&mut self) -> Client {
        tokio::task::block_in_place(|| self.start());
        self.client().await
    }
}

/// One download as the service reports it.
pub async fn info(client: &mut Client, id: protocol::DownloadId) -> protocol::DownloadInfo {
    list(client)
        .await
        .into_iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("download {id} is not in the list"))
}

/// Every download the service holds.
pub async fn list(client: &mut Client) -> Vec<protocol::DownloadInfo> {
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
pub async fn add(client: &mut Client, request: protocol::AddRequest) -> protocol::DownloadId {
    let added: protocol::AddResult = client
        .call(protocol::Command::Add(request))
        .await
        .expect("add is accepted");
    added.id
}

/// Add a download of `file` with `threads` connections (the service's default for `None`) and return its id.
pub async fn add_file(
    client: &mut Client,
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
    client: &mut Client,
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

/// Give `path` to `nobody`; false (with the reason printed) where that is not allowed.
pub fn give_away(path: &Path) -> bool {
    let out = std::process::Command::new("chown")
        .arg("65534")
        .arg(path)
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "SKIPPED (chown needs root): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("SKIPPED (no chown): {e}");
            false
        }
    }
}

/// Ask the service to put new downloads in `dir`.
pub async fn try_set_download_dir(
    client: &mut Client,
    dir: &Path,
) -> Result<SettingsResult, ClientError> {
    client
        .call(Cmd::SetSettings {
            settings: SettingsPatch {
                download_dir: Some(dir.display().to_string()),
                ..SettingsPatch::default()
            },
        })
        .await
}
