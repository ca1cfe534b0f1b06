//! Helpers shared by the integration tests.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::{AddRequest, DownloadId, DownloadInfo, Settings, SettingsPatch, Status};
use sdm::engine::oneshot::GetSpec;
use sdm::engine::{Engine, EngineConfig};
use sdm_tests::server::{Cert, TlsFront, test_ca_der};
use sdm_tests::{FileSpec, ServedFile, TestServer, sha256_file};

/// Run `fut`, failing the test if it takes longer than `secs`.
pub async fn bounded<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("test timed out after {secs} s"))
}

/// A `sdm get` spec with test defaults: 8 connections, 5 retries, no cap, a 5 s stall timeout, and https bodies on the
/// own path at any size (the product takes it from [`sdm::engine::transfer::OWN_TLS_MIN`] on), so the small files of
/// the faulty-body tests exercise it.
pub fn spec(url: &str, output: &Path) -> GetSpec {
    GetSpec {
        url: url.to_string(),
        output: output.to_path_buf(),
        threads: 8,
        retries: 5,
        headers: Vec::new(),
        limit: 0,
        stall_timeout: Duration::from_secs(5),
        sha256: None,
        splice: true,
        own_tls_min: 0,
    }
}

/// `oneshot::get` without a progress bar.
pub async fn get(spec: GetSpec) -> anyhow::Result<PathBuf> {
    Ok(sdm::engine::oneshot::get(spec, |_| {}).await?)
}

/// Download `file` into a fresh folder with the test spec changed by `tweak`; the folder comes back with the result so
/// it outlives the checks.
pub async fn fetch(
    file: &ServedFile,
    tweak: impl FnOnce(&mut GetSpec),
) -> (tempfile::TempDir, anyhow::Result<PathBuf>) {
    let dir = tempdir();
    let mut s = spec(file.url(), dir.path());
    tweak(&mut s);
    let result = get(s).await;
    (dir, result)
}

/// [`fetch`], expecting success (`why` otherwise), and check the result is exactly `file`.
pub async fn fetch_exact(
    file: &ServedFile,
    tweak: impl FnOnce(&mut GetSpec),
    why: &str,
) -> (tempfile::TempDir, PathBuf) {
    let (dir, result) = fetch(file, tweak).await;
    let path = result.expect(why);
    assert_exact(&path, file);
    (dir, path)
}

/// [`fetch`], and check the result is the exact file or a clean error ([`assert_exact_or_clean_error`]).
pub async fn fetch_exact_or_clean_error(
    file: &ServedFile,
    tweak: impl FnOnce(&mut GetSpec),
) -> (tempfile::TempDir, anyhow::Result<PathBuf>) {
    let (dir, result) = fetch(file, tweak).await;
    assert_exact_or_clean_error(&result, dir.path(), file);
    (dir, result)
}

/// The whole of the simplest `oneshot::get` test, bounded by `secs`: serve `spec` at `path` on a fresh server,
/// download it with the test spec changed by `tweak`, expect success (`why` otherwise) and an exact file, over both
/// body paths ([`on_every_body_path`]).
pub async fn serve_and_fetch_exact(
    secs: u64,
    path: &str,
    spec: FileSpec,
    tweak: impl Fn(&mut GetSpec),
    why: &str,
) {
    on_every_body_path(secs, path, async |server, path, splice| {
        let file = server.serve(path, spec.clone());
        fetch_exact(&file, |s| both(s, &tweak, splice), why).await;
    })
    .await;
}

/// The same for a download that may fail but must never leave wrong bytes ([`assert_exact_or_clean_error`]).
pub async fn serve_and_fetch_exact_or_clean_error(
    secs: u64,
    path: &str,
    spec: FileSpec,
    tweak: impl Fn(&mut GetSpec),
) {
    on_every_body_path(secs, path, async |server, path, splice| {
        let file = server.serve(path, spec.clone());
        let _ = fetch_exact_or_clean_error(&file, |s| both(s, &tweak, splice)).await;
    })
    .await;
}

/// Run `case` on a fresh server once per body path, all within `secs`: bodies spliced over http, read by reqwest over
/// http, then over https on the own-socket path (`splice` on, through a [`TlsFront`] whose CA this process trusts).
/// Each run serves its own copy of the file (at `path`, `/reqwest{path}`, `/tls{path}`) so faults counted per file
/// start afresh; `case` gets the [`Site`] to serve it from, that path and the `splice` to set in its spec. The path
/// under way is printed, so a failure says which one failed.
pub async fn on_every_body_path(
    secs: u64,
    path: &str,
    mut case: impl AsyncFnMut(&Site<'_>, &str, bool),
) {
    sdm::engine::probe::trust_extra_roots(vec![test_ca_der()]);
    bounded(secs, async {
        let server = TestServer::start().await;
        let front = TlsFront::start(&server, Cert::Good).await;
        let runs = [
            ("splice", path.to_string(), None, true),
            ("reqwest", format!("/reqwest{path}"), None, false),
            ("tls", format!("/tls{path}"), Some(&front), true),
        ];
        for (name, path, front, splice) in runs {
            eprintln!("body path: {name}");
            let site = Site {
                server: &server,
                front,
            };
            case(&site, &path, splice).await;
        }
    })
    .await;
}

/// Where [`on_every_body_path`] serves a case's files: the test server, over http or through an https front.
pub struct Site<'a> {
    server: &'a TestServer,
    front: Option<&'a TlsFront>,
}

impl Site<'_> {
    /// [`TestServer::serve`], its URL through the front when there is one.
    pub fn serve(&self, path: &str, spec: FileSpec) -> ServedFile {
        let file = self.server.serve(path, spec);
        match self.front {
            Some(front) => file.via(front),
            None => file,
        }
    }
}

fn both(s: &mut GetSpec, tweak: &impl Fn(&mut GetSpec), splice: bool) {
    tweak(s);
    s.splice = splice;
}

/// A fresh temporary folder.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary folder")
}

/// The names of the entries in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// The entries of `dir` that are not `.part` files or their `.sdm` control files (a `sdm get` that can go on): what a
/// user would take for a download.
pub fn finished_files_in(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| !n.ends_with(".part") && !n.ends_with(".sdm"))
        .collect()
}

/// The file at `path` is exactly the current content of `file`.
pub fn assert_exact(path: &Path, file: &ServedFile) {
    let got = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("no file at {}: {e}", path.display()))
        .len();
    assert_eq!(got, file.len(), "size of {}", path.display());
    assert_eq!(
        sha256_file(path),
        file.sha256(),
        "content of {}",
        path.display()
    );
}

/// The result of a download that may fail but must never leave wrong bytes: either the exact file, or an error and
/// no finished file in `dir`.
pub fn assert_exact_or_clean_error(
    result: &anyhow::Result<PathBuf>,
    dir: &Path,
    file: &ServedFile,
) {
    match result {
        Ok(path) => assert_exact(path, file),
        Err(e) => assert_eq!(
            finished_files_in(dir),
            Vec::<String>::new(),
            "failed with `{e:#}` but left a file behind"
        ),
    }
}

/// Start an engine whose data and download folders are inside `root`.
pub async fn start_engine(root: &Path) -> Engine {
    let config = EngineConfig {
        data_dir: root.join("data"),
        default_download_dir: root.join("downloads"),
        crash_after_keyed_add: None,
    };
    std::fs::create_dir_all(&config.default_download_dir).expect("create download folder");
    Engine::start(config).await.expect("engine starts")
}

/// Within `secs`, run `test` on an engine started in a fresh folder (see [`start_engine`]), then shut the engine down.
pub async fn with_engine(secs: u64, test: impl AsyncFnOnce(&tempfile::TempDir, &Engine)) {
    bounded(secs, async {
        let root = tempdir();
        let engine = start_engine(root.path()).await;
        test(&root, &engine).await;
        engine.shutdown().await;
    })
    .await;
}

/// Shut `engine` down and drop it, as a stopped service leaves its data folder.
pub async fn stop(engine: Engine) {
    engine.shutdown().await;
    drop(engine);
}

/// Add a download of `file` with `threads` connections (the engine's default for `None`).
pub async fn add(engine: &Engine, file: &ServedFile, threads: Option<u32>) -> DownloadId {
    engine
        .add(AddRequest {
            url: file.url().to_string(),
            threads,
            ..AddRequest::default()
        })
        .await
        .expect("add is accepted")
        .id
}

/// Apply `patch` to the engine's settings, which must accept it.
pub async fn set_settings(engine: &Engine, patch: SettingsPatch) -> Settings {
    engine.set_settings(patch).await.expect("settings accepted")
}

/// Wait until download `id` has at least `bytes` bytes.
pub async fn wait_downloaded(engine: &Engine, id: DownloadId, bytes: u64) -> DownloadInfo {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    let what = if bytes.is_multiple_of(MIB) {
        format!("{} MiB downloaded", bytes / MIB)
    } else {
        format!("{} KiB downloaded", bytes / KIB)
    };
    wait_for(engine, id, &what, |d| d.downloaded >= bytes).await
}

/// Download `id` is completed, and its file and numbers are exactly those of `file`.
pub fn assert_completed_exact(engine: &Engine, id: DownloadId, file: &ServedFile) {
    let info = engine.get(id).expect("download exists");
    assert_eq!(info.status, Status::Completed, "{info:?}");
    assert_exact(Path::new(&info.path), file);
    assert_eq!(info.total, Some(file.len()), "{info:?}");
    assert_eq!(info.downloaded, file.len(), "{info:?}");
    assert!(info.finished_at.is_some(), "{info:?}");
}

/// Wait until download `id` completes, then [`assert_completed_exact`].
pub async fn complete_exact(engine: &Engine, id: DownloadId, file: &ServedFile) -> DownloadInfo {
    let info = wait_status(engine, id, Status::Completed).await;
    assert_completed_exact(engine, id, file);
    info
}

/// Poll `engine.get(id)` every 20 ms until `pred` holds, and return that state.
pub async fn wait_for(
    engine: &Engine,
    id: DownloadId,
    what: &str,
    pred: impl Fn(&DownloadInfo) -> bool,
) -> DownloadInfo {
    let mut last = None;
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let info = engine.get(id).expect("download exists");
            if pred(&info) {
                return info;
            }
            last = Some(info);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("download {id} never reached `{what}`; last seen: {last:?}"))
}

/// Wait until download `id` has the status `status` (and fail at once if it reaches another finished status).
pub async fn wait_status(engine: &Engine, id: DownloadId, status: Status) -> DownloadInfo {
    let info = wait_for(engine, id, status.as_str(), |d| {
        d.status == status || (d.status.is_finished() && d.status != status)
    })
    .await;
    assert_eq!(
        info.status, status,
        "download {id} ended as {:?} (error: {:?})",
        info.status, info.error
    );
    info
}

/// Wait up to 5 s until no connection is open on `file`; `whose` names them ("the paused download's") for a failure.
pub async fn connections_closed(file: &ServedFile, whose: &str) {
    until(5, &format!("{whose} connections to close"), || {
        file.active() == 0
    })
    .await;
}

/// Wait until `cond` holds, polling every 10 ms for up to `secs`.
pub async fn until(secs: u64, what: &str, cond: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(secs), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "waited {secs} s for {what}");
}
