//! Many clients at once against one real service: two relays (two browsers) and the CLI issue 1,000 mixed commands
//! together; then 200 downloads get random pause/resume/cancel from four concurrent clients. No acknowledged command
//! is lost, no id is handed out twice, no download is stuck, and each ends completed exact, cancelled with nothing
//! left on disk, or paused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use protocol::{Command as Cmd, DownloadId, DownloadInfo, SettingsPatch, SettingsResult, Status};
use sdm_tests::harness::Sandbox;
use sdm_tests::{FileSpec, ServedFile, TestServer};
use serde_json::json;

use crate::fault_support::{Connect, Rng, add_file, list};
use crate::support::{assert_exact, bounded};

const KIB: u64 = 1024;

/// What the last acknowledged command asked of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Run,
    Pause,
    Cancel,
}

/// The downloads one test added, with what was last asked of each.
#[derive(Default)]
struct Book {
    intents: BTreeMap<DownloadId, Intent>,
    files: HashMap<DownloadId, ServedFile>,
    /// Every id an `add` was answered with, duplicates included.
    ids_given: Vec<DownloadId>,
}

impl Book {
    fn added(&mut self, id: DownloadId, file: ServedFile) {
        self.ids_given.push(id);
        self.intents.insert(id, Intent::Run);
        self.files.insert(id, file);
    }
}

/// Serve `n` small files, paced so that commands land mid-transfer.
fn files(server: &TestServer, tag: &str, n: usize, seed: u64) -> Vec<ServedFile> {
    (0..n)
        .map(|i| {
            server.serve(
                &format!("/{tag}-{i}.bin"),
                FileSpec::new(192 * KIB + i as u64 * 97)
                    .seed(seed + i as u64)
                    .rate(384 * KIB),
            )
        })
        .collect()
}

/// Wait until nothing runs or waits any more, then check every download against what was last asked of it; then
/// resume the paused ones and check that they complete too.
async fn settle_and_check(sdm: &Sandbox, book: &Book) -> BTreeMap<&'static str, usize> {
    let mut client = sdm.client().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let all = loop {
        let all = list(&mut client).await;
        if all
            .iter()
            .all(|d| !matches!(d.status, Status::Queued | Status::Downloading))
        {
            break all;
        }
        let busy: Vec<_> = all
            .iter()
            .filter(|d| !d.status.is_finished() && d.status != Status::Paused)
            .collect();
        assert!(
            std::time::Instant::now() < deadline,
            "{} downloads still running or queued after 120 s, e.g. {:?}",
            busy.len(),
            busy.first()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };

    let unique: HashSet<_> = book.ids_given.iter().collect();
    assert_eq!(
        unique.len(),
        book.ids_given.len(),
        "an id was handed out twice"
    );
    let by_id: HashMap<DownloadId, &DownloadInfo> = all.iter().map(|d| (d.id, d)).collect();
    assert_eq!(by_id.len(), all.len(), "the list shows an id twice");
    let mut counts = BTreeMap::new();
    let mut paused = Vec::new();
    for (&id, &intent) in &book.intents {
        let d = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("download {id} was acknowledged but is not listed"));
        let file = &book.files[&id];
        let outcome = match (intent, d.status) {
            (Intent::Run, Status::Completed) | (Intent::Pause, Status::Completed) => {
                assert_exact(Path::new(&d.path), file);
                "completed exact"
            }
            (Intent::Pause, Status::Paused) => {
                assert!(
                    d.path.is_empty() || !Path::new(&d.path).exists(),
                    "paused with a final file: {d:?}"
                );
                paused.push(id);
                "paused"
            }
            (Intent::Cancel, Status::Cancelled) => {
                if !d.path.is_empty() {
                    let part = sdm::engine::filename::part_path(Path::new(&d.path));
                    assert!(
                        !part.exists(),
                        "cancelled but {} is left: {d:?}",
                        part.display()
                    );
                    assert!(
                        !Path::new(&d.path).exists(),
                        "cancelled but a final file is there: {d:?}"
                    );
                }
                "cancelled clean"
            }
            (intent, status) => panic!(
                "download {id}: last acknowledged {intent:?}, but it ended {status:?}: {d:?}"
            ),
        };
        *counts.entry(outcome).or_insert(0) += 1;
    }
    // A paused download is not stuck: it completes when resumed.
    for &id in &paused {
        let _: serde_json::Value = client
            .call(Cmd::Resume { download_id: id })
            .await
            .expect("resume");
    }
    for &id in &paused {
        let d = crate::fault_support::wait_info(&mut client, id, 60, "completed", |d| {
            d.status.is_finished()
        })
        .await;
        assert_eq!(d.status, Status::Completed, "{d:?}");
        assert_exact(Path::new(&d.path), &book.files[&id]);
    }
    counts
}

async fn set_max_concurrent(client: &mut sdm::client::Client, n: u32) {
    let _: SettingsResult = client
        .call(Cmd::SetSettings {
            settings: SettingsPatch {
                max_concurrent: Some(n),
                ..SettingsPatch::default()
            },
        })
        .await
        .expect("settings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_and_the_cli_issue_a_thousand_commands_at_once() {
    const PER_RELAY: usize = 425;
    const CLI: usize = 150;
    bounded(240, async {
        let mut rng = Rng::from_env("1000 commands");
        let seeds = [rng.next(), rng.next(), rng.next()];
        let server = TestServer::start().await;
        let mut sdm = Sandbox::new();
        tokio::task::block_in_place(|| sdm.start());
        set_max_concurrent(&mut sdm.client().await, 12).await;
        let book = Arc::new(Mutex::new(Book::default()));
        let sdm = Arc::new(sdm);

        let mut actors = Vec::new();
        for (a, seed) in seeds.iter().copied().enumerate().take(2) {
            let pool = files(&server, &format!("relay{a}"), PER_RELAY, 1000 * (a as u64 + 1));
            let (sdm, book) = (sdm.clone(), book.clone());
            actors.push(std::thread::spawn(move || relay_actor(&sdm, &book, pool, seed, a)));
        }
        let pool = files(&server, "cli", CLI, 5000);
        let (sdm2, book2, seed) = (sdm.clone(), book.clone(), seeds[2]);
        actors.push(std::thread::spawn(move || cli_actor(&sdm2, &book2, pool, seed)));
        let started = std::time::Instant::now();
        let done: usize = tokio::task::block_in_place(|| actors.into_iter().map(|t| t.join().expect("actor")).sum());
        let took = started.elapsed();
        assert_eq!(done, 2 * PER_RELAY + CLI);

        // The last word on settings holds for every client.
        let mut client = sdm.client().await;
        set_max_concurrent(&mut client, 7).await;
        let s: SettingsResult = client.call(Cmd::GetSettings).await.expect("settings");
        assert_eq!(s.settings.max_concurrent, 7);

        let book = std::mem::take(&mut *book.lock().unwrap());
        let counts = settle_and_check(&sdm, &book).await;
        eprintln!(
            "1000 commands: {done} answered in {took:.1?} by 2 relays + the CLI; {} downloads: {counts:?}",
            book.intents.len()
        );
    })
    .await;
}

/// One browser: `n` random commands through its own relay, each checked against its reply.
fn relay_actor(
    sdm: &Sandbox,
    book: &Mutex<Book>,
    pool: Vec<ServedFile>,
    seed: u64,
    who: usize,
) -> usize {
    let mut rng = crate::fault_support::Rng::seeded(seed);
    let mut relay = sdm.relay();
    let mut mine: Vec<DownloadId> = Vec::new();
    let mut pool = pool.into_iter();
    let n = pool.len();
    for i in 0..n {
        let id = (who as u64 + 1) * 1_000_000 + i as u64;
        let pick = rng.range(0, 100);
        let target = (!mine.is_empty()).then(|| mine[rng.range(0, mine.len() as u64) as usize]);
        let reply = match (pick, target) {
            (0..25, _) | (_, None) => {
                let file = pool.next().expect("a file per command");
                let r =
                    relay.call(json!({"id": id, "cmd": "add", "url": file.url(), "threads": 2}));
                assert_eq!(r["ok"], true, "{r}");
                let did = r["result"]["id"].as_u64().expect("an id");
                mine.push(did);
                book.lock().unwrap().added(did, file);
                continue;
            }
            (25..40, Some(t)) => (
                relay.call(json!({"id": id, "cmd": "pause", "download_id": t})),
                t,
                Intent::Pause,
            ),
            (40..58, Some(t)) => (
                relay.call(json!({"id": id, "cmd": "resume", "download_id": t})),
                t,
                Intent::Run,
            ),
            (58..63, Some(t)) => (
                relay.call(json!({"id": id, "cmd": "cancel", "download_id": t})),
                t,
                Intent::Cancel,
            ),
            (63..78, _) => {
                let r = relay.call(json!({"id": id, "cmd": "list"}));
                assert_eq!(r["ok"], true, "{r}");
                continue;
            }
            (78..85, _) => {
                let n = rng.range(8, 17);
                let r = relay.call(
                    json!({"id": id, "cmd": "set_settings", "settings": {"max_concurrent": n}}),
                );
                assert_eq!(r["result"]["settings"]["max_concurrent"], n, "{r}");
                continue;
            }
            (85..92, _) => {
                let r = relay.call(json!({"id": id, "cmd": "history", "limit": 50}));
                assert_eq!(r["ok"], true, "{r}");
                continue;
            }
            _ => {
                let r = relay.call(json!({"id": id, "cmd": "ping"}));
                assert_eq!(r["ok"], true, "{r}");
                continue;
            }
        };
        let (r, target, intent) = reply;
        if r["ok"] == true {
            book.lock().unwrap().intents.insert(target, intent);
        } else {
            // Refused only because the download is past that command (completed, or cancelled before).
            assert_eq!(r["error"]["code"], "invalid_state", "{r}");
        }
    }
    n
}

/// The command line: `n` random `sdm` runs, each a process of its own.
fn cli_actor(sdm: &Sandbox, book: &Mutex<Book>, pool: Vec<ServedFile>, seed: u64) -> usize {
    let mut rng = crate::fault_support::Rng::seeded(seed);
    let mut mine: Vec<DownloadId> = Vec::new();
    let mut pool = pool.into_iter();
    let n = pool.len();
    for _ in 0..n {
        let pick = rng.range(0, 100);
        let target = (!mine.is_empty()).then(|| mine[rng.range(0, mine.len() as u64) as usize]);
        let (verb, intent) = match (pick, target) {
            (0..30, _) | (_, None) => {
                let file = pool.next().expect("a file per command");
                let out = sdm.run(&["add", file.url(), "-c", "2"]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let did: DownloadId = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("add prints the id");
                mine.push(did);
                book.lock().unwrap().added(did, file);
                continue;
            }
            (30..45, _) => ("pause", Intent::Pause),
            (45..65, _) => ("resume", Intent::Run),
            (65..70, _) => ("cancel", Intent::Cancel),
            _ => {
                let out = sdm.run(&["ls"]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                continue;
            }
        };
        let t = target.expect("a target").to_string();
        let out = sdm.run(&[verb, &t]);
        if out.status.success() {
            book.lock()
                .unwrap()
                .intents
                .insert(t.parse().unwrap(), intent);
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !err.trim().is_empty(),
                "`sdm {verb} {t}` failed without a word"
            );
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_downloads_under_random_pause_resume_cancel_end_consistent() {
    const N: usize = 200;
    const CLIENTS: u64 = 4;
    bounded(240, async {
        let mut rng = Rng::from_env("200 downloads");
        let server = TestServer::start().await;
        let mut sdm = Sandbox::new();
        let mut client = sdm.start_and_connect().await;
        set_max_concurrent(&mut client, 16).await;
        let mut book = Book::default();
        for file in files(&server, "many", N, 9000) {
            let id = add_file(&mut client, &file, Some(2)).await;
            book.added(id, file);
        }
        let ids: Vec<DownloadId> = book.intents.keys().copied().collect();
        // Four clients, each owning the downloads whose id is its number modulo four, so that each download's
        // commands come in a known order.
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..CLIENTS {
            let mut client = sdm.client().await;
            let mine: Vec<DownloadId> =
                ids.iter().copied().filter(|id| id % CLIENTS == c).collect();
            let mut rng = crate::fault_support::Rng::seeded(rng.next());
            tasks.spawn(async move {
                let mut intents = Vec::new();
                for _ in 0..150 {
                    let id = mine[rng.range(0, mine.len() as u64) as usize];
                    let (cmd, intent) = match rng.range(0, 100) {
                        0..45 => (Cmd::Pause { download_id: id }, Intent::Pause),
                        45..90 => (Cmd::Resume { download_id: id }, Intent::Run),
                        _ => (Cmd::Cancel { download_id: id }, Intent::Cancel),
                    };
                    match client.call::<serde_json::Value>(cmd).await {
                        Ok(_) => intents.push((id, intent)),
                        Err(sdm::client::ClientError::Remote(e)) => {
                            assert_eq!(e.code, protocol::ErrorCode::InvalidState, "{e:?}");
                        }
                        Err(e) => panic!("{e}"),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(rng.range(0, 15))).await;
                }
                intents
            });
        }
        while let Some(intents) = tasks.join_next().await {
            for (id, intent) in intents.expect("client task") {
                book.intents.insert(id, intent);
            }
        }
        let counts = settle_and_check(&sdm, &book).await;
        eprintln!("200 downloads under random pause/resume/cancel: {counts:?}");
        assert_eq!(counts.values().sum::<usize>(), N);
    })
    .await;
}
