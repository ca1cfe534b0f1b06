//! The `Engine` queue, driven through its Rust API as the service drives it.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use protocol::{AddRequest, ErrorCode, Event, SettingsPatch, Status};
use sdm::engine::Engine;
use sdm_tests::{FileSpec, ServedFile, TestServer};
use tokio::sync::broadcast::error::RecvError;

use crate::support::{
    add, assert_completed_exact, assert_exact, bounded, complete_exact, connections_closed,
    finished_files_in, names_in, set_settings, start_engine, stop, tempdir, until, wait_downloaded,
    wait_for, wait_status, with_engine,
};

const MIB: u64 = 1024 * 1024;
const KIB: u64 = 1024;

/// A settings change of `max_concurrent` alone.
fn max_concurrent(n: u32) -> SettingsPatch {
    SettingsPatch {
        max_concurrent: Some(n),
        ..SettingsPatch::default()
    }
}

/// A settings change of `bandwidth_limit` alone.
fn bandwidth_limit(bytes_per_second: u64) -> SettingsPatch {
    SettingsPatch {
        bandwidth_limit: Some(bytes_per_second),
        ..SettingsPatch::default()
    }
}

/// Serve a 4 MiB file (content `seed`) at `path`, paced at 1 MiB/s a connection, add it with two connections, and
/// wait until `bytes` are down: a download caught running.
async fn started(
    engine: &Engine,
    server: &TestServer,
    path: &str,
    seed: u64,
    bytes: u64,
) -> (ServedFile, u64) {
    let file = server.serve(path, FileSpec::new(4 * MIB).seed(seed).rate(MIB));
    let id = add(engine, &file, Some(2)).await;
    wait_downloaded(engine, id, bytes).await;
    (file, id)
}

/// Wait until every download in `downloads` completes, then check each with [`assert_completed_exact`].
async fn complete_all_exact(engine: &Engine, downloads: &[(u64, &ServedFile)]) {
    for &(id, _) in downloads {
        wait_status(engine, id, Status::Completed).await;
    }
    for &(id, file) in downloads {
        assert_completed_exact(engine, id, file);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_downloads_run_two_at_a_time_and_all_complete() {
    with_engine(60, async |_root, engine| {
        set_settings(engine, max_concurrent(2)).await;
        assert_eq!(engine.settings().max_concurrent, 2);
        let server = TestServer::start().await;
        // Capped per connection so each takes about half a second and the downloads overlap.
        let files: Vec<ServedFile> = (0..5)
            .map(|i| {
                server.serve(
                    &format!("/q{i}.bin"),
                    FileSpec::new(MIB).seed(70 + i).rate(MIB),
                )
            })
            .collect();
        let mut events = engine.subscribe();
        let mut ids = Vec::new();
        for f in &files {
            ids.push(add(engine, f, Some(2)).await);
        }

        let mut status: HashMap<u64, Status> = ids.iter().map(|&id| (id, Status::Queued)).collect();
        let mut most_downloading = 0;
        while !status.values().all(|s| s.is_finished()) {
            match tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
                Ok(Ok(Event::State { download })) => {
                    if let Some(s) = status.get_mut(&download.id) {
                        *s = download.status;
                    }
                }
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(RecvError::Lagged(_))) => {
                    for &id in &ids {
                        status.insert(id, engine.get(id).expect("download exists").status);
                    }
                }
                Ok(Err(RecvError::Closed)) => panic!("the event channel closed"),
            }
            let downloading = status
                .values()
                .filter(|&&s| s == Status::Downloading)
                .count();
            most_downloading = most_downloading.max(downloading);
            assert!(
                downloading <= 2,
                "{downloading} downloads running at once: {status:?}"
            );
        }

        for (id, file) in ids.iter().zip(&files) {
            assert_completed_exact(engine, *id, file);
        }
        assert!(
            server.peak_files_at_once() <= 2,
            "the server sent {} files at once",
            server.peak_files_at_once()
        );
        assert_eq!(
            most_downloading, 2,
            "the queue never ran two downloads together"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_the_transfer_and_resume_continues_it() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        let (file, id) = started(engine, &server, "/pause.bin", 80, 512 * KIB).await;
        engine.pause(id).expect("pause is accepted");
        let paused = wait_status(engine, id, Status::Paused).await;
        connections_closed(&file, "the paused download's").await;
        let sent = file.bytes_sent();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let still = engine.get(id).expect("download exists");
        assert_eq!(still.status, Status::Paused);
        assert_eq!(file.bytes_sent(), sent, "bytes flowed while paused");
        assert!(still.downloaded >= paused.downloaded.min(512 * KIB));

        let resumed_at = Instant::now();
        engine.resume(id).expect("resume is accepted");
        complete_exact(engine, id, &file).await;
        let after: Vec<_> = file
            .gets()
            .into_iter()
            .filter(|r| r.at >= resumed_at)
            .collect();
        assert!(
            after.iter().any(|r| r.range_start() > Some(0)),
            "no ranged request from a non-zero offset after resume: {after:?}"
        );
        let refetched = file.bytes_sent_since(resumed_at);
        assert!(
            refetched + still.downloaded / 2 < file.len(),
            "resume fetched {refetched} bytes although {} of {} were already there",
            still.downloaded,
            file.len()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_transfer_and_leaves_no_file() {
    with_engine(60, async |root, engine| {
        let server = TestServer::start().await;
        let (file, id) = started(engine, &server, "/cancel.bin", 81, 256 * KIB).await;
        engine.cancel(id).expect("cancel is accepted");
        let info = wait_status(engine, id, Status::Cancelled).await;
        connections_closed(&file, "the cancelled download's").await;

        assert!(
            !Path::new(&info.path).exists(),
            "a cancelled download left {}",
            info.path
        );
        assert!(finished_files_in(&root.path().join("downloads")).is_empty());
        let err = engine.resume(id).err();
        assert!(
            err.is_none()
                || err
                    .as_ref()
                    .is_some_and(|e| e.code == ErrorCode::InvalidState),
            "resume of a cancelled download: {err:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_forgets_a_running_download_and_deletes_its_files() {
    with_engine(60, async |root, engine| {
        let mut events = engine.subscribe();
        let server = TestServer::start().await;
        let (file, id) = started(engine, &server, "/remove.bin", 82, 256 * KIB).await;
        engine.remove(id, true).expect("remove is accepted");

        // A running download is removed once its transfer has stopped; the `removed` event says when.
        let removed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match events.recv().await {
                    Ok(Event::Removed { id: gone }) if gone == id => return,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => panic!("the event channel closed"),
                }
            }
        })
        .await;
        assert!(removed.is_ok(), "no `removed` event");
        let err = engine.get(id).expect_err("a removed download is gone");
        assert_eq!(err.code, ErrorCode::NotFound);
        connections_closed(&file, "the removed download's").await;
        let downloads = root.path().join("downloads");
        until(5, "the removed download's files to go", || {
            names_in(&downloads).is_empty()
        })
        .await;
        assert!(
            engine
                .list(Default::default())
                .downloads
                .iter()
                .all(|d| d.id != id)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_of_a_completed_download_can_keep_its_file() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        let file = server.serve("/keep.bin", FileSpec::new(MIB).seed(83));
        let id = add(engine, &file, Some(2)).await;
        let info = wait_status(engine, id, Status::Completed).await;

        engine.remove(id, false).expect("remove is accepted");

        assert!(engine.get(id).is_err());
        assert_exact(Path::new(&info.path), &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_bandwidth_limit_applies_to_a_running_download() {
    with_engine(60, async |_root, engine| {
        let limit = 512 * KIB;
        set_settings(engine, bandwidth_limit(limit)).await;
        let server = TestServer::start().await;
        let file = server.serve("/live.bin", FileSpec::new(8 * MIB).seed(84));
        let id = add(engine, &file, Some(4)).await;

        wait_for(engine, id, "some progress", |d| d.downloaded > 0).await;
        let (t0, d0) = (Instant::now(), engine.get(id).unwrap().downloaded);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (t1, d1) = (Instant::now(), engine.get(id).unwrap().downloaded);
        let rate = (d1 - d0) as f64 / (t1 - t0).as_secs_f64();
        assert!(
            rate <= limit as f64 * 1.3,
            "the global cap of {limit} B/s let {rate:.0} B/s through"
        );
        assert!(d1 > d0, "no progress under the cap");
        assert!(
            d1 < file.len() / 2,
            "downloaded {d1} bytes in 2 s under a 512 KiB/s cap"
        );

        let settings = set_settings(engine, bandwidth_limit(0)).await;
        assert_eq!(settings.bandwidth_limit, 0);
        // Uncapped, the remaining ~7 MiB over loopback takes well under the 10 s allowed here; capped it would take 14.
        let info = tokio::time::timeout(
            Duration::from_secs(10),
            wait_status(engine, id, Status::Completed),
        )
        .await
        .expect("the download sped up once the cap was lifted");
        assert_eq!(info.status, Status::Completed);
        assert_completed_exact(engine, id, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_and_referrer_go_to_the_server_but_not_to_history() {
    bounded(30, async {
        let root = tempdir();
        let engine = start_engine(root.path()).await;
        let server = TestServer::start().await;
        let file = server.serve(
            "/members.bin",
            FileSpec::new(2 * MIB)
                .seed(85)
                .require_cookie("session=s3cr3t"),
        );
        let id = engine
            .add(AddRequest {
                url: file.url().to_string(),
                threads: Some(4),
                headers: [("Cookie".to_string(), "session=s3cr3t".to_string())].into(),
                referrer: Some("http://example.test/page".into()),
                ..AddRequest::default()
            })
            .await
            .expect("add is accepted")
            .id;

        complete_exact(&engine, id, &file).await;
        for r in file.requests() {
            assert_eq!(r.header("cookie"), Some("session=s3cr3t"), "{r:?}");
            assert_eq!(
                r.header("referer"),
                Some("http://example.test/page"),
                "{r:?}"
            );
        }
        engine.shutdown().await;
        let data = root.path().join("data");
        for name in names_in(&data) {
            let path = data.join(&name);
            if name.starts_with("history") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(!text.contains("s3cr3t"), "the cookie is in {name}");
            }
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&path).unwrap().permissions(),
            );
            assert_eq!(mode & 0o077, 0, "{name} is readable by others ({mode:o})");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_download_limit_holds() {
    with_engine(30, async |_root, engine| {
        let server = TestServer::start().await;
        let file = server.serve("/slow.bin", FileSpec::new(2 * MIB).seed(86));
        let started = Instant::now();
        let id = engine
            .add(AddRequest {
                url: file.url().to_string(),
                threads: Some(4),
                bandwidth_limit: Some(MIB),
                ..AddRequest::default()
            })
            .await
            .expect("add is accepted")
            .id;

        wait_status(engine, id, Status::Completed).await;

        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1600),
            "2 MiB at 1 MiB/s took only {took:?}"
        );
        assert_completed_exact(engine, id, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_fails_with_a_reason_and_goes_to_history() {
    with_engine(30, async |root, engine| {
        let server = TestServer::start().await;
        let file = server.serve("/nope.bin", FileSpec::new(MIB).status_always(404));
        let id = add(engine, &file, Some(2)).await;

        let info = wait_status(engine, id, Status::Failed).await;

        let reason = info.error.clone().unwrap_or_default();
        assert!(
            reason.contains("404"),
            "the error does not say 404: {reason:?}"
        );
        assert!(!Path::new(&info.path).exists());
        assert!(finished_files_in(&root.path().join("downloads")).is_empty());
        let history = engine.history(Default::default()).expect("history");
        assert!(
            history
                .items
                .iter()
                .any(|h| h.id == id && h.status == Status::Failed),
            "no failed item in history: {history:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused() {
    with_engine(30, async |_root, engine| {
        let bad = async |req: AddRequest| engine.add(req).await.map(|a| a.id).map_err(|e| e.code);
        let url = "http://127.0.0.1:9/x.bin".to_string();

        assert_eq!(
            bad(AddRequest {
                url: "not a url".into(),
                ..AddRequest::default()
            })
            .await,
            Err(ErrorCode::InvalidArgument)
        );
        assert_eq!(
            bad(AddRequest {
                url: "file:///etc/passwd".into(),
                ..AddRequest::default()
            })
            .await,
            Err(ErrorCode::InvalidArgument)
        );
        assert_eq!(
            bad(AddRequest {
                url: url.clone(),
                threads: Some(0),
                ..AddRequest::default()
            })
            .await,
            Err(ErrorCode::InvalidArgument)
        );
        assert_eq!(
            bad(AddRequest {
                url: url.clone(),
                threads: Some(33),
                ..AddRequest::default()
            })
            .await,
            Err(ErrorCode::InvalidArgument)
        );
        assert_eq!(
            engine
                .set_settings(max_concurrent(0))
                .await
                .map_err(|e| e.code),
            Err(ErrorCode::InvalidArgument)
        );
        assert_eq!(
            engine.pause(999).map_err(|e| e.code),
            Err(ErrorCode::NotFound)
        );
        assert_eq!(engine.list(Default::default()).total, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_downloads_can_be_paused_cancelled_or_removed_before_they_start() {
    with_engine(60, async |_root, engine| {
        set_settings(engine, max_concurrent(1)).await;
        let server = TestServer::start().await;
        let running = server.serve("/first.bin", FileSpec::new(2 * MIB).seed(87).rate(MIB));
        let held = server.serve("/held.bin", FileSpec::new(MIB).seed(88));
        let dropped = server.serve("/dropped.bin", FileSpec::new(MIB).seed(89));
        let forgotten = server.serve("/forgotten.bin", FileSpec::new(MIB).seed(90));
        let a = add(engine, &running, Some(1)).await;
        let b = add(engine, &held, Some(1)).await;
        let c = add(engine, &dropped, Some(1)).await;
        let d = add(engine, &forgotten, Some(1)).await;
        assert_eq!(engine.get(b).unwrap().status, Status::Queued);

        engine.pause(b).expect("pause a queued download");
        engine.cancel(c).expect("cancel a queued download");
        engine.remove(d, true).expect("remove a queued download");
        assert_eq!(engine.get(b).unwrap().status, Status::Paused);
        assert_eq!(engine.get(c).unwrap().status, Status::Cancelled);
        assert_eq!(
            engine.get(d).map_err(|e| e.code).err(),
            Some(ErrorCode::NotFound)
        );

        wait_status(engine, a, Status::Completed).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            engine.get(b).unwrap().status,
            Status::Paused,
            "a paused download started by itself"
        );
        for f in [&held, &dropped, &forgotten] {
            assert!(f.requests().is_empty(), "{} was fetched", f.path());
        }

        engine.resume(b).expect("resume is accepted");
        wait_status(engine, b, Status::Completed).await;
        assert_completed_exact(engine, a, &running);
        assert_completed_exact(engine, b, &held);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_max_concurrent_starts_a_queued_download_at_once() {
    with_engine(60, async |_root, engine| {
        set_settings(engine, max_concurrent(1)).await;
        let server = TestServer::start().await;
        let one = server.serve("/one.bin", FileSpec::new(3 * MIB).seed(91).rate(MIB));
        let two = server.serve("/two.bin", FileSpec::new(3 * MIB).seed(92).rate(MIB));
        let a = add(engine, &one, Some(1)).await;
        let b = add(engine, &two, Some(1)).await;
        wait_status(engine, a, Status::Downloading).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(engine.get(b).unwrap().status, Status::Queued);

        set_settings(engine, max_concurrent(2)).await;
        let started = tokio::time::timeout(
            Duration::from_secs(1),
            wait_status(engine, b, Status::Downloading),
        )
        .await;
        assert!(started.is_ok(), "the second download waited for the first");
        assert_eq!(engine.get(a).unwrap().status, Status::Downloading);

        complete_all_exact(engine, &[(a, &one), (b, &two)]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_events_come_at_most_five_times_a_second() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        let file = server.serve("/watched.bin", FileSpec::new(4 * MIB).seed(93).rate(MIB));
        let mut events = engine.subscribe();
        let id = add(engine, &file, Some(1)).await;
        wait_for(engine, id, "some progress", |d| d.downloaded > 0).await;

        let window = Duration::from_secs(2);
        let began = Instant::now();
        let mut seen = Vec::new();
        while began.elapsed() < window {
            match tokio::time::timeout(window.saturating_sub(began.elapsed()), events.recv()).await
            {
                Ok(Ok(Event::Progress { downloads })) => {
                    if let Some(p) = downloads.iter().find(|p| p.id == id) {
                        seen.push(p.downloaded);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("event stream: {e}"),
                Err(_) => break,
            }
        }

        assert!(
            !seen.is_empty(),
            "no progress events in 2 s of a running download"
        );
        assert!(
            seen.len() <= 12,
            "{} progress events in 2 s (at most 5 a second)",
            seen.len()
        );
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "progress went backwards: {seen:?}"
        );
        complete_exact(engine, id, &file).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_download_dir_setting_applies_to_new_downloads() {
    with_engine(30, async |root, engine| {
        let elsewhere = root.path().join("elsewhere");
        set_settings(
            engine,
            SettingsPatch {
                download_dir: Some(elsewhere.to_string_lossy().into_owned()),
                ..SettingsPatch::default()
            },
        )
        .await;
        let server = TestServer::start().await;
        let file = server.serve("/moved.bin", FileSpec::new(MIB).seed(94));
        let id = add(engine, &file, Some(2)).await;

        let info = wait_status(engine, id, Status::Completed).await;

        assert_eq!(Path::new(&info.path), elsewhere.join("moved.bin"));
        assert_completed_exact(engine, id, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_queued_downloads_of_one_url_get_two_files() {
    with_engine(30, async |_root, engine| {
        let server = TestServer::start().await;
        let file = server.serve("/same.bin", FileSpec::new(2 * MIB).seed(95).rate(4 * MIB));
        let a = add(engine, &file, Some(2)).await;
        let b = add(engine, &file, Some(2)).await;

        let ia = wait_status(engine, a, Status::Completed).await;
        let ib = wait_status(engine, b, Status::Completed).await;

        assert_ne!(ia.path, ib.path);
        assert_completed_exact(engine, a, &file);
        assert_completed_exact(engine, b, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_pause_and_resume_still_ends_exact() {
    with_engine(60, async |root, engine| {
        let server = TestServer::start().await;
        let file = server.serve(
            "/flicker.bin",
            FileSpec::new(4 * MIB).seed(96).etag().rate(2 * MIB),
        );
        let id = add(engine, &file, Some(4)).await;
        wait_for(engine, id, "some progress", |d| d.downloaded > 0).await;

        for i in 0..10 {
            engine.pause(id).expect("pause is accepted");
            if i % 3 == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            engine.resume(id).expect("resume is accepted");
            tokio::time::sleep(Duration::from_millis(30 * (i % 4))).await;
        }
        let info = complete_exact(engine, id, &file).await;
        let downloads = root.path().join("downloads");
        assert_eq!(
            names_in(&downloads),
            [Path::new(&info.path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()],
            "leftovers beside the download"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_of_a_paused_download_deletes_its_part_file() {
    with_engine(60, async |root, engine| {
        let server = TestServer::start().await;
        let (_file, id) = started(engine, &server, "/parked.bin", 97, 256 * KIB).await;
        engine.pause(id).expect("pause is accepted");
        wait_status(engine, id, Status::Paused).await;
        let downloads = root.path().join("downloads");
        assert!(
            !names_in(&downloads).is_empty(),
            "a paused download has no .part file to resume from"
        );

        engine.remove(id, true).expect("remove is accepted");

        until(5, "the download to be forgotten", || {
            engine.get(id).is_err()
        })
        .await;
        until(5, "the part file to go", || names_in(&downloads).is_empty()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_cap_is_shared_by_all_downloads() {
    with_engine(60, async |_root, engine| {
        set_settings(
            engine,
            SettingsPatch {
                bandwidth_limit: Some(MIB),
                max_concurrent: Some(2),
                ..SettingsPatch::default()
            },
        )
        .await;
        let server = TestServer::start().await;
        let a_file = server.serve("/a.bin", FileSpec::new(2 * MIB).seed(100));
        let b_file = server.serve("/b.bin", FileSpec::new(2 * MIB).seed(101));
        let started = Instant::now();
        let a = add(engine, &a_file, Some(2)).await;
        let b = add(engine, &b_file, Some(2)).await;

        wait_status(engine, a, Status::Completed).await;
        wait_status(engine, b, Status::Completed).await;

        // 4 MiB in all under a 1 MiB/s global cap: 4 s, less a small initial burst.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(3400),
            "two downloads under a global 1 MiB/s cap moved 4 MiB in {took:?}"
        );
        assert_completed_exact(engine, a, &a_file);
        assert_completed_exact(engine, b, &b_file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_and_settings_and_history_events() {
    bounded(60, async {
        let root = tempdir();
        let engine = start_engine(root.path()).await;
        let mut events = engine.subscribe();
        let patch = max_concurrent(4);
        engine.set_settings(patch).await.expect("settings accepted");
        let server = TestServer::start().await;
        let files: Vec<ServedFile> = (0..5)
            .map(|i| server.serve(&format!("/p{i}.bin"), FileSpec::new(64 * KIB).seed(110 + i)))
            .collect();
        let mut ids = Vec::new();
        for f in &files {
            ids.push(add(&engine, f, Some(1)).await);
        }
        for &id in &ids {
            wait_status(&engine, id, Status::Completed).await;
        }

        let page = engine.list(protocol::PageRequest {
            offset: 1,
            limit: Some(2),
        });
        assert_eq!(page.total, 5);
        assert_eq!(page.downloads.len(), 2);
        let all = engine.list(Default::default());
        assert_eq!(all.downloads.len(), 5);
        assert_eq!(page.downloads, all.downloads[1..3]);
        let mut listed: Vec<u64> = all.downloads.iter().map(|d| d.id).collect();
        listed.sort();
        assert_eq!(listed, ids);

        let mut saw_settings = false;
        let mut saw_history = false;
        while let Ok(event) = events.try_recv() {
            match event {
                Event::Settings { settings } => saw_settings |= settings.max_concurrent == 4,
                Event::History { .. } => saw_history = true,
                _ => {}
            }
        }
        assert!(saw_settings, "no `settings` event after set_settings");
        assert!(saw_history, "no `history` event after five completions");
        assert_eq!(engine.history(Default::default()).unwrap().total, 5);

        engine.clear_history().await.expect("history clears");
        assert_eq!(engine.history(Default::default()).unwrap().total, 0);
        stop(engine).await;
        let again = start_engine(root.path()).await;
        assert_eq!(
            again.history(Default::default()).unwrap().total,
            0,
            "cleared history came back"
        );
        again.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_after_its_retries() {
    with_engine(30, async |root, engine| {
        // Bind then drop a listener: its port is closed, so connections are refused.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let id = engine
            .add(AddRequest {
                url: format!("http://127.0.0.1:{port}/nothing.bin"),
                retries: Some(1),
                ..AddRequest::default()
            })
            .await
            .expect("add is accepted")
            .id;

        let info = wait_status(engine, id, Status::Failed).await;

        assert!(info.error.is_some(), "{info:?}");
        assert!(finished_files_in(&root.path().join("downloads")).is_empty());
        let too_long = format!("http://127.0.0.1/{}", "a".repeat(protocol::MAX_URL_LEN));
        let err = engine
            .add(AddRequest {
                url: too_long,
                ..AddRequest::default()
            })
            .await
            .expect_err("an over-long URL is refused");
        assert_eq!(err.code, ErrorCode::InvalidArgument);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_file_name_is_sanitized_and_never_overwrites() {
    with_engine(30, async |root, engine| {
        let server = TestServer::start().await;
        let file = server.serve("/whatever.bin", FileSpec::new(MIB).seed(120));
        let downloads = root.path().join("downloads");
        std::fs::write(downloads.join("notes.txt"), b"mine").unwrap();
        let add_named = |name: &str| {
            engine.add(AddRequest {
                url: file.url().to_string(),
                filename: Some(name.to_string()),
                ..AddRequest::default()
            })
        };
        // A name that tries to leave the folder may be refused outright; if it is accepted, it must stay inside.
        for name in ["../../escape.txt", "..", "/etc/cron.d/x", "a\u{0}b\nc.txt"] {
            let id = match add_named(name).await {
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::InvalidArgument, "{name:?}: {e:?}");
                    continue;
                }
                Ok(added) => added.id,
            };
            let info = wait_status(engine, id, Status::Completed).await;
            let path = Path::new(&info.path);
            assert_eq!(
                path.parent().unwrap().canonicalize().unwrap(),
                downloads.canonicalize().unwrap(),
                "{name:?} landed at {}",
                path.display()
            );
            assert_exact(path, &file);
        }
        let taken = add_named("notes.txt").await.expect("add is accepted").id;
        let taken = wait_status(engine, taken, Status::Completed).await;

        assert_eq!(names_in(root.path()), ["data", "downloads"]);
        assert_eq!(Path::new(&taken.path), downloads.join("notes (1).txt"));
        assert_exact(Path::new(&taken.path), &file);
        assert_eq!(std::fs::read(downloads.join("notes.txt")).unwrap(), b"mine");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stall_timeout_setting_reaches_running_transfers() {
    with_engine(40, async |_root, engine| {
        set_settings(
            engine,
            SettingsPatch {
                stall_timeout_secs: Some(2),
                ..SettingsPatch::default()
            },
        )
        .await;
        let server = TestServer::start().await;
        // The first two responses stall after 64 KiB; with the default 20 s timeout this test would time out.
        let file = server.serve(
            "/sticky.bin",
            FileSpec::new(2 * MIB).seed(121).stall_after(64 * KIB, 2),
        );
        let id = add(engine, &file, Some(2)).await;

        let info = tokio::time::timeout(
            Duration::from_secs(15),
            wait_status(engine, id, Status::Completed),
        )
        .await
        .expect("the stalls were noticed within the 2 s timeout");

        assert_eq!(info.status, Status::Completed);
        assert_completed_exact(engine, id, &file);
    })
    .await;
}
