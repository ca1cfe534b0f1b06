//! Bounds on what a request may make SDM do or keep: download folders in system or hidden places are refused (as
//! written and where their links lead), a file that could run opens its folder instead, header and referrer sizes
//! are capped, the queue holds at most 10,000 downloads, history keeps the newest 10,000 items, and a finished
//! download's credentials leave `state.json`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use protocol::{
    AddRequest, Command as Cmd, DownloadId, ErrorCode, Expect, HistoryItem, PageRequest,
    SettingsResult, Status,
};
use sdm::client::ClientError;
use sdm::engine::plan::Dest;
use sdm::engine::state::{self, DownloadRecord};
use sdm_tests::harness::Sandbox;
use sdm_tests::{FileSpec, TestServer};

use crate::fault_support::{Connect, add, add_file, list, try_set_download_dir, wait_info};
use crate::support::{bounded, start_engine, stop, tempdir, until};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Expect `result` to be refused with `code`, for a reason that mentions `mentions`.
fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    code: ErrorCode,
    mentions: &str,
) {
    match result {
        Err(ClientError::Remote(body)) => {
            assert_eq!(body.code, code, "{}", body.message);
            assert!(
                body.message.contains(mentions),
                "the reason {:?} does not mention {mentions:?}",
                body.message
            );
            eprintln!("  {:?}: {}", body.code, body.message);
        }
        other => panic!("expected a {code:?} refusal mentioning {mentions:?}, got {other:?}"),
    }
}

/// Folders outside the sandbox that a failed check may create, removed (when empty) however the test ends.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_folders_in_system_or_hidden_places_are_refused_and_not_created() {
    bounded(60, async {
        let mut sdm = Sandbox::new();
        let home = sdm.home();
        let mut client = sdm.start_and_connect().await;
        let name = format!("sdm-bounds-{}", std::process::id());
        let system = Path::new("/etc").join(&name);
        let usr = Path::new("/usr/local").join(&name);
        let _cleanup = RemoveOnDrop(vec![system.clone(), usr.clone()]);
        let autostart = home.join(".config/autostart");
        // Links that look like folders of one's own: one to /etc, one into a hidden folder of the home.
        std::os::unix::fs::symlink("/etc", home.join("dl")).unwrap();
        std::fs::create_dir_all(home.join(".config")).unwrap();
        std::os::unix::fs::symlink(home.join(".config"), home.join("docs")).unwrap();
        let through_link = home.join("dl").join(system.file_name().unwrap());

        let cases = [
            (system.clone(), "system folder /etc"),
            (usr.clone(), "system folder /usr"),
            (PathBuf::from("/"), "root folder"),
            (
                home.join("x/../../../..")
                    .join(system.strip_prefix("/").unwrap()),
                "system folder /etc",
            ),
            (autostart.clone(), "hidden folder ~/.config"),
            (home.join(".ssh"), "hidden folder ~/.ssh"),
            (
                home.join(".local/share/applications"),
                "hidden folder ~/.local",
            ),
            (home.join("dl"), "symbolic link to /etc"),
            (through_link.clone(), "system folder /etc"),
            (home.join("docs/autostart"), "hidden folder ~/.config"),
        ];
        for (dir, mentions) in &cases {
            assert_refused(
                try_set_download_dir(&mut client, dir).await,
                ErrorCode::InvalidArgument,
                mentions,
            );
        }
        let made: Vec<PathBuf> = [
            system.clone(),
            usr.clone(),
            autostart,
            home.join(".ssh"),
            home.join(".local"),
        ]
        .into_iter()
        .filter(|d| d.exists())
        .collect();
        assert!(made.is_empty(), "refused folders were created: {made:?}");
        let s: SettingsResult = client.call(Cmd::GetSettings).await.expect("settings");
        assert_eq!(s.settings.download_dir, "", "a refused folder was saved");

        // A folder of one's own is still accepted and made.
        let mine = home.join("Downloads/sdm");
        let s = try_set_download_dir(&mut client, &mine)
            .await
            .expect("a folder in the home is accepted");
        assert_eq!(Path::new(&s.settings.download_dir), mine);
        assert!(mine.is_dir());
        // `..` is resolved before anything is made: the folder passed through is not created.
        let s = try_set_download_dir(&mut client, &home.join(".cache/../Music"))
            .await
            .expect("a folder in the home, reached through `..`, is accepted");
        assert_eq!(Path::new(&s.settings.download_dir), home.join("Music"));
        assert!(home.join("Music").is_dir());
        assert!(!home.join(".cache").exists(), "a hidden folder was made");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_system_download_folder_gives_way_to_the_default_with_a_warning() {
    bounded(30, async {
        let root = tempdir();
        let data = root.path().join("data");
        state::ensure_dir(&data).unwrap();
        let saved = protocol::Settings {
            download_dir: "/etc/cron.d".into(),
            ..protocol::Settings::default()
        };
        state::save_settings(&data, &saved).unwrap();
        let engine = start_engine(root.path()).await;
        assert_eq!(
            engine.settings().download_dir,
            "",
            "the default folder is used"
        );
        let warnings = engine.warnings();
        assert!(
            warnings.iter().any(|w| w.contains("system folder /etc")),
            "{warnings:?}"
        );
        stop(engine).await;
    })
    .await;
}

/// A fake `xdg-open` first on the service's `PATH`, which writes each path it is asked to open to a file: no
/// desktop application is started, and the test sees what `open` chose.
struct Opener {
    log: PathBuf,
}

impl Opener {
    fn install(sdm: &mut Sandbox) -> Opener {
        let bin = sdm.root.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let log = sdm.root.path().join("opened");
        let script = bin.join("xdg-open");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{}'\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::var("PATH").unwrap_or_default();
        sdm.env("PATH", &format!("{}:{path}", bin.display()));
        Opener { log }
    }

    fn opened(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_could_run_open_their_folder_instead() {
    bounded(60, async {
        let server = TestServer::start().await;
        let mut sdm = Sandbox::new();
        let opener = Opener::install(&mut sdm);
        let mut client = sdm.start_and_connect().await;
        let mut done = Vec::new();
        for (i, name) in ["evil.desktop", "tool", "paper.pdf", "App.JAR"]
            .iter()
            .enumerate()
        {
            let file = server.serve(
                &format!("/{name}"),
                FileSpec::new(4 * KIB).seed(300 + i as u64),
            );
            let id = add_file(&mut client, &file, Some(1)).await;
            let d = wait_info(&mut client, id, 20, "completed", |d| d.status.is_finished()).await;
            assert_eq!(d.status, Status::Completed, "{d:?}");
            done.push((id, PathBuf::from(&d.path)));
        }
        // A program without a telling name: its x bit alone makes it one.
        std::fs::set_permissions(&done[1].1, std::fs::Permissions::from_mode(0o755)).unwrap();

        let folder = done[0].1.parent().unwrap().display().to_string();
        let expected = [
            folder.clone(),
            folder.clone(),
            done[2].1.display().to_string(),
            folder.clone(),
        ];
        for (i, (id, _)) in done.iter().enumerate() {
            let _: serde_json::Value = client
                .call(Cmd::Open {
                    download_id: *id,
                    folder: false,
                })
                .await
                .expect("open");
            until(10, "the opener to run", || opener.opened().len() > i).await;
        }
        assert_eq!(opener.opened(), expected);
    })
    .await;
}

/// An add of an unreachable URL with these extra fields.
fn add_with(headers: &[(&str, String)], referrer: Option<String>) -> Cmd {
    Cmd::Add(AddRequest {
        url: "http://127.0.0.1:9/file.bin".into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        referrer,
        ..AddRequest::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_referrers_are_refused() {
    bounded(60, async {
        let mut sdm = Sandbox::new();
        let mut client = sdm.start_and_connect().await;
        let two_mb = "c".repeat(2 << 20);
        let nine_of_eight_kib: Vec<(String, String)> = (0..9)
            .map(|i| (format!("X-Part-{i}"), "v".repeat(8000)))
            .collect();
        let nine: Vec<(&str, String)> = nine_of_eight_kib
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let long_referrer = format!("https://example.org/{}", "r".repeat(8 * 1024));
        let cases = [
            (add_with(&[("Cookie", two_mb)], None), "at most 8192"),
            (
                add_with(&[("Cookie", "c".repeat(8 * 1024 + 1))], None),
                "at most 8192",
            ),
            (add_with(&nine, None), "at most 65536"),
            (add_with(&[], Some(long_referrer)), "referrer"),
            // The referrer counts towards the total.
            (
                add_with(
                    &nine[..8],
                    Some(format!("https://e.org/{}", "r".repeat(2000))),
                ),
                "at most 65536",
            ),
        ];
        for (request, mentions) in cases {
            assert_refused(
                client.call::<serde_json::Value>(request).await,
                ErrorCode::InvalidArgument,
                mentions,
            );
        }
        assert!(list(&mut client).await.is_empty(), "something was queued");

        // At the limits, an add is accepted.
        let _: protocol::AddResult = client
            .call(add_with(
                &[("Cookie", "c".repeat(8 * 1024))],
                Some(format!("https://e.org/{}", "r".repeat(8 * 1024 - 14))),
            ))
            .await
            .expect("values at the limits are accepted");
    })
    .await;
}

fn paused_record(id: DownloadId) -> DownloadRecord {
    DownloadRecord {
        id,
        url: format!("http://127.0.0.1:9/{id}.bin"),
        headers: Vec::new(),
        filename: format!("{id}.bin"),
        dest: Dest::Dir {
            dir: "/nonexistent".into(),
            name: None,
        },
        status: Status::Paused,
        threads: 1,
        retries: 0,
        bandwidth_limit: 0,
        error: None,
        created_at: 0,
        finished_at: None,
        plan: None,
        path: None,
        size: None,
        client_key: None,
        joined_keys: Vec::new(),
        rank: None,
    }
}

fn unreachable(name: &str) -> AddRequest {
    AddRequest {
        url: format!("http://127.0.0.1:9/{name}"),
        retries: Some(0),
        ..AddRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_holds_at_most_10000_downloads() {
    bounded(120, async {
        const FULL: DownloadId = 10_000;
        let root = tempdir();
        let data = root.path().join("data");
        state::ensure_dir(&data).unwrap();
        let records: Vec<DownloadRecord> = (1..=FULL).map(paused_record).collect();
        state::save_state(&data, FULL + 1, &records).unwrap();
        let engine = start_engine(root.path()).await;
        assert_eq!(engine.list(PageRequest::default()).total, FULL as usize);

        let full = engine.add(unreachable("one-more.bin")).await.unwrap_err();
        assert_eq!(full.code, ErrorCode::InvalidState, "{full}");
        assert!(full.message.contains("10000 downloads"), "{full}");
        // A verified add is refused before the server is asked.
        let verified = engine
            .add_verified(AddRequest {
                expect: Some(Expect::default()),
                ..unreachable("captured.bin")
            })
            .await
            .unwrap_err();
        assert_eq!(verified.code, ErrorCode::InvalidState, "{verified}");
        assert_eq!(engine.list(PageRequest::default()).total, FULL as usize);

        // Removing one makes room for one.
        engine.remove(1, false).unwrap();
        engine
            .add(unreachable("room-again.bin"))
            .await
            .expect("an add fits once one is removed");
        assert_eq!(engine.list(PageRequest::default()).total, FULL as usize);
        stop(engine).await;
    })
    .await;
}

fn history_item(id: DownloadId) -> HistoryItem {
    HistoryItem {
        id,
        url: format!("http://127.0.0.1:9/{id}.bin"),
        filename: format!("{id}.bin"),
        path: format!("/nonexistent/{id}.bin"),
        status: Status::Completed,
        total: Some(1),
        downloaded: 1,
        error: None,
        created_at: 0,
        finished_at: id,
    }
}

fn history_file_ids(data: &Path) -> Vec<DownloadId> {
    std::fs::read_to_string(data.join("history.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<HistoryItem>(l).unwrap().id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_the_newest_10000_items_and_rotates_its_file() {
    bounded(120, async {
        // One line short of the point where the file is rewritten (10,000 kept + 1,000 slack).
        const LINES: DownloadId = 10_999;
        let root = tempdir();
        let data = root.path().join("data");
        state::ensure_dir(&data).unwrap();
        let mut body = Vec::new();
        for id in 1..=LINES {
            body.extend_from_slice(&serde_json::to_vec(&history_item(id)).unwrap());
            body.push(b'\n');
        }
        std::fs::write(data.join("history.jsonl"), body).unwrap();
        let engine = start_engine(root.path()).await;
        let page = engine
            .history(PageRequest {
                offset: 0,
                limit: Some(1),
            })
            .unwrap();
        assert_eq!(page.total, 10_000, "history shows the newest 10,000 only");
        assert_eq!(page.items[0].id, LINES);

        // One more finished download: the file reaches 11,000 lines and is rewritten with the newest 10,000.
        let id = engine.add(unreachable("last.bin")).await.unwrap().id;
        let _ = engine.cancel(id);
        until(20, "history to be rotated", || {
            history_file_ids(&data).len() == 10_000
        })
        .await;
        let ids = history_file_ids(&data);
        assert_eq!(ids[0], 1001, "the oldest 1,000 are gone");
        assert_eq!(*ids.last().unwrap(), id);
        let page = engine.history(PageRequest::default()).unwrap();
        assert_eq!(page.total, 10_000);
        assert_eq!(page.items[0].id, id);
        stop(engine).await;

        // What a restart loads is the same.
        let engine = start_engine(root.path()).await;
        let page = engine.history(PageRequest::default()).unwrap();
        assert_eq!(page.total, 10_000);
        assert_eq!(page.items[0].id, id);
        stop(engine).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_leave_state_json_once_a_download_is_over() {
    bounded(60, async {
        let server = TestServer::start().await;
        let small = server.serve("/small.bin", FileSpec::new(64 * KIB).seed(310));
        let slow = |i: u64| {
            server.serve(
                &format!("/slow{i}.bin"),
                FileSpec::new(8 * MIB).seed(311 + i).rate(64 * KIB),
            )
        };
        let (to_cancel, to_pause) = (slow(0), slow(1));
        let mut sdm = Sandbox::new();
        let mut client = sdm.start_and_connect().await;
        let with_secrets = |url: &str, tag: &str| AddRequest {
            url: url.to_string(),
            headers: [
                ("Cookie".to_string(), format!("sid=SECRET-COOKIE-{tag}")),
                (
                    "Authorization".to_string(),
                    format!("Bearer SECRET-TOKEN-{tag}"),
                ),
            ]
            .into(),
            ..AddRequest::default()
        };
        let completed = add(&mut client, with_secrets(small.url(), "completed")).await;
        let cancelled = add(&mut client, with_secrets(to_cancel.url(), "cancelled")).await;
        let paused = add(&mut client, with_secrets(to_pause.url(), "paused")).await;
        let _: serde_json::Value = client
            .call(Cmd::Cancel {
                download_id: cancelled,
            })
            .await
            .expect("cancel");
        let _: serde_json::Value = client
            .call(Cmd::Pause {
                download_id: paused,
            })
            .await
            .expect("pause");
        let d = wait_info(&mut client, completed, 20, "completed", |d| {
            d.status.is_finished()
        })
        .await;
        assert_eq!(d.status, Status::Completed, "{d:?}");
        drop(client);
        tokio::task::block_in_place(|| sdm.stop());

        let text = std::fs::read_to_string(sdm.data().join("state.json")).unwrap();
        for tag in ["completed", "cancelled"] {
            assert!(
                !text.contains(&format!("SECRET-COOKIE-{tag}"))
                    && !text.contains(&format!("SECRET-TOKEN-{tag}")),
                "the {tag} download's credentials are still in state.json"
            );
        }
        // A paused download (and a failed one) can go on, so it keeps what authorizes it.
        assert!(text.contains("SECRET-COOKIE-paused"), "{text}");
        let state: serde_json::Value = serde_json::from_str(&text).unwrap();
        let statuses: Vec<(u64, String)> = state["downloads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["id"].as_u64().unwrap(),
                    d["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert!(
            statuses.contains(&(completed, "completed".into()))
                && statuses.contains(&(cancelled, "cancelled".into())),
            "both finished downloads are still listed: {statuses:?}"
        );
    })
    .await;
}
