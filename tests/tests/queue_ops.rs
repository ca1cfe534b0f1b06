//! Issue 19: commands on downloads already in the queue (`update`, `set_url`, `move`, `pause_all`, `resume_all`,
//! `clear_finished`), through the real engine against a real server.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use protocol::{
    AddRequest, DownloadId, ErrorCode, Event, MoveTo, PageRequest, SettingsPatch, Status,
};
use sdm::engine::{Engine, NewAddress};
use sdm_tests::{FileSpec, ServedFile, TestServer};

use crate::support::{
    add, assert_completed_exact, assert_exact, bounded, complete_exact, connections_closed,
    set_settings, start_engine, stop, tempdir, until, wait_downloaded, wait_for, wait_status,
    with_engine,
};

const MIB: u64 = 1024 * 1024;
const KIB: u64 = 1024;

/// The ids of the queue's downloads, in the order `list` gives them.
fn order(engine: &Engine) -> Vec<DownloadId> {
    engine
        .list(PageRequest::default())
        .downloads
        .iter()
        .map(|d| d.id)
        .collect()
}

/// Bytes download `id` moves in `window`, measured on its own counter.
async fn progress_over(engine: &Engine, id: DownloadId, window: Duration) -> u64 {
    let d0 = engine.get(id).expect("download exists").downloaded;
    tokio::time::sleep(window).await;
    engine.get(id).expect("download exists").downloaded - d0
}

/// The ids in history, newest first.
fn in_history(engine: &Engine) -> Vec<DownloadId> {
    engine
        .history(PageRequest::default())
        .expect("history")
        .items
        .iter()
        .map(|h| h.id)
        .collect()
}

/// Add `file` with a cap of `limit` bytes per second.
async fn add_capped(engine: &Engine, file: &ServedFile, limit: u64) -> DownloadId {
    engine
        .add(AddRequest {
            url: file.url().to_string(),
            threads: Some(2),
            bandwidth_limit: Some(limit),
            ..AddRequest::default()
        })
        .await
        .expect("add is accepted")
        .id
}

/// A `set_url` to `url` that keeps the saved headers.
fn to(url: &str, restart: bool) -> NewAddress {
    NewAddress {
        url: url.to_owned(),
        restart,
        ..NewAddress::default()
    }
}

/// Add `file` and pause it once `bytes` are down; returns its id once it shows as paused with its connections closed.
async fn paused_at(engine: &Engine, file: &ServedFile, bytes: u64) -> DownloadId {
    let id = add(engine, file, Some(2)).await;
    wait_downloaded(engine, id, bytes).await;
    engine.pause(id).expect("pause is accepted");
    wait_status(engine, id, Status::Paused).await;
    connections_closed(file, "the paused download's").await;
    id
}

/// No request for `file` fetched its first bytes again: no GET without a range, none from byte 0 but the look at
/// the new address (its first byte alone).
fn assert_nothing_from_zero(file: &ServedFile) {
    let from_zero: Vec<_> = file
        .gets()
        .into_iter()
        .filter(|r| !r.is_look() && r.range_start().is_none_or(|start| start == 0))
        .collect();
    assert!(
        from_zero.is_empty(),
        "requests from byte 0 at {}: {from_zero:?}",
        file.path()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_the_cap_of_a_running_download_at_once() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        let file = server.serve("/cap.bin", FileSpec::new(16 * MIB).seed(191));
        let id = add_capped(engine, &file, 64 * KIB).await;
        wait_for(engine, id, "some progress", |d| d.downloaded > 0).await;
        let capped = progress_over(engine, id, Duration::from_secs(1)).await;
        // Uncapped, loopback would move the whole 16 MiB in that second.
        assert!(
            capped < 2 * MIB,
            "{capped} bytes in 1 s under a 64 KiB/s cap"
        );

        engine
            .update(id, Some(0), None)
            .expect("update is accepted");
        assert_eq!(engine.get(id).unwrap().bandwidth_limit, 0);
        complete_exact(engine, id, &file).await;

        // And the other way: a cap set on a running download holds it back from then on.
        let paced = server.serve(
            "/paced.bin",
            FileSpec::new(16 * MIB).seed(192).rate(2 * MIB),
        );
        let id = add(engine, &paced, Some(2)).await;
        wait_downloaded(engine, id, 512 * KIB).await;
        let free = progress_over(engine, id, Duration::from_secs(1)).await;
        engine
            .update(id, Some(64 * KIB), None)
            .expect("update is accepted");
        assert_eq!(engine.get(id).unwrap().bandwidth_limit, 64 * KIB);
        // The bucket's first burst and pieces already on their way pass; a second later the cap holds.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let capped = progress_over(engine, id, Duration::from_secs(1)).await;
        assert!(
            capped * 4 < free,
            "{capped} bytes in 1 s under a 64 KiB/s cap, {free} before it"
        );
        engine
            .update(id, Some(0), None)
            .expect("update is accepted");
        complete_exact(engine, id, &paced).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_of_connections_restarts_a_running_download_from_its_bytes() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        let file = server.serve(
            "/conns.bin",
            FileSpec::new(8 * MIB).seed(193).etag().rate(MIB),
        );
        let id = add(engine, &file, Some(2)).await;
        wait_downloaded(engine, id, MIB).await;
        let updated_at = Instant::now();
        engine
            .update(id, None, Some(4))
            .expect("update is accepted");
        assert_eq!(engine.get(id).unwrap().threads, 4);
        wait_for(engine, id, "four connections", |d| {
            d.connections == 4 || d.status.is_finished()
        })
        .await;
        complete_exact(engine, id, &file).await;
        let after: Vec<_> = file
            .gets()
            .into_iter()
            .filter(|r| r.at >= updated_at)
            .collect();
        assert!(!after.is_empty(), "no request after the update");
        assert!(
            after.iter().all(|r| r.range_start().is_some_and(|s| s > 0)),
            "a request after the update went back to byte 0: {after:?}"
        );
        assert!(
            file.peak_data_connections(64 * KIB) >= 3,
            "the download never used more than two connections"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_refuses_bad_values_and_finished_downloads() {
    with_engine(30, async |_root, engine| {
        let server = TestServer::start().await;
        let file = server.serve("/small.bin", FileSpec::new(64 * KIB).seed(194));
        let id = add(engine, &file, Some(1)).await;
        complete_exact(engine, id, &file).await;
        let err = engine.update(id, Some(1), None).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidState, "{err:?}");
        let err = engine.update(id, None, Some(0)).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");
        let err = engine.update(9999, Some(1), None).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_url_keeps_the_partial_file_when_the_new_address_serves_the_same_file() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        let spec = FileSpec::new(4 * MIB)
            .seed(195)
            .etag()
            .last_modified()
            .rate(MIB);
        let old = server.serve("/expired.bin", spec.clone());
        let id = paused_at(engine, &old, MIB).await;
        let kept = engine.get(id).unwrap().downloaded;
        let new = server.serve("/fresh.bin", spec);

        engine
            .set_url(id, to(new.url(), false))
            .await
            .expect("the same file at the new address is accepted");
        let info = engine.get(id).unwrap();
        assert_eq!(info.url, new.url());
        assert_eq!(info.status, Status::Paused, "set_url keeps the status");
        assert_eq!(info.downloaded, kept, "the bytes already down are kept");
        let old_requests = old.requests().len();

        engine.resume(id).expect("resume is accepted");
        let done = complete_exact(engine, id, &new).await;
        assert_exact(Path::new(&done.path), &old);
        assert_nothing_from_zero(&new);
        assert_eq!(
            old.requests().len(),
            old_requests,
            "the old address was asked again"
        );
        assert!(
            new.bytes_sent() + kept / 2 <= new.len(),
            "the new address sent {} bytes although {kept} were kept",
            new.bytes_sent()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_url_on_a_running_download_goes_on_at_the_new_address() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        let spec = FileSpec::new(6 * MIB).seed(196).etag().rate(MIB);
        let old = server.serve("/moving.bin", spec.clone());
        let new = server.serve("/mirror.bin", spec);
        let id = add(engine, &old, Some(2)).await;
        wait_downloaded(engine, id, MIB).await;
        engine
            .set_url(id, to(new.url(), false))
            .await
            .expect("the same file at the new address is accepted");
        let switched_at = Instant::now();
        complete_exact(engine, id, &new).await;
        assert_nothing_from_zero(&new);
        assert!(
            old.gets().iter().all(|r| r.at < switched_at),
            "the old address was asked after the switch"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_url_refuses_another_file_with_conflict_unless_told_to_restart() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        let old = server.serve("/a.bin", FileSpec::new(4 * MIB).seed(197).etag().rate(MIB));
        let id = paused_at(engine, &old, MIB).await;
        let before = engine.get(id).unwrap();
        let other_content = server.serve("/b.bin", FileSpec::new(4 * MIB).seed(198).etag());
        let other_size = server.serve("/c.bin", FileSpec::new(3 * MIB).seed(197).etag());

        for other in [&other_content, &other_size] {
            let err = engine
                .set_url(id, to(other.url(), false))
                .await
                .expect_err("another file is refused");
            assert_eq!(err.code, ErrorCode::Conflict, "{err:?}");
            assert_eq!(
                engine.get(id).unwrap(),
                before,
                "a refused set_url changed the download"
            );
            assert!(
                other.gets().iter().all(|r| r.is_look()),
                "the other file was downloaded: {:?}",
                other.gets()
            );
        }
        let err = engine
            .set_url(id, to("ftp://x/y", false))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");

        engine
            .set_url(id, to(other_content.url(), true))
            .await
            .expect("restart takes the other file");
        assert_eq!(
            engine.get(id).unwrap().downloaded,
            0,
            "restart starts from zero"
        );
        engine.resume(id).expect("resume is accepted");
        complete_exact(engine, id, &other_content).await;
        assert!(
            other_content
                .gets()
                .iter()
                .any(|r| r.range_start().is_none_or(|s| s == 0)),
            "the restart never asked for byte 0"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_url_with_headers_sends_them_to_the_new_address_from_then_on() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        let spec = FileSpec::new(4 * MIB).seed(199).etag().rate(MIB);
        let old = server.serve("/expired-link.bin", spec.clone());
        let id = paused_at(engine, &old, MIB).await;
        let kept = engine.get(id).unwrap().downloaded;
        // The browser started the file again from a new link, which needs the new session's cookie.
        let new = server.serve("/signed.bin", spec.require_cookie("session=fresh"));
        let before = engine.get(id).unwrap();

        let err = engine
            .set_url(id, to(new.url(), false))
            .await
            .expect_err("without the cookie the new address answers 403");
        assert_eq!(err.code, ErrorCode::FetchFailed, "{err:?}");
        let bad = NewAddress {
            headers: Some(BTreeMap::from([("Cookie".into(), "a\r\nX-Evil: 1".into())])),
            ..to(new.url(), false)
        };
        let err = engine
            .set_url(id, bad)
            .await
            .expect_err("a bad header is refused");
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");
        assert_eq!(
            engine.get(id).unwrap(),
            before,
            "a refused set_url changed the download"
        );

        let with_cookie = NewAddress {
            headers: Some(BTreeMap::from([
                ("Cookie".into(), "session=fresh".into()),
                ("User-Agent".into(), "browser/1".into()),
            ])),
            referrer: Some(format!("{}/page", server.url(""))),
            ..to(new.url(), false)
        };
        let accepted_from = Instant::now();
        engine
            .set_url(id, with_cookie)
            .await
            .expect("the same file, reached with the cookie");
        assert_eq!(
            engine.get(id).unwrap().downloaded,
            kept,
            "the bytes already down are kept"
        );
        engine.resume(id).expect("resume is accepted");
        complete_exact(engine, id, &new).await;
        // The refused attempt asked for byte 0 without the cookie; from the accepted one on, nothing is fetched
        // again and every request carries what the browser sent.
        let asked: Vec<_> = new
            .requests()
            .into_iter()
            .filter(|r| r.at >= accepted_from)
            .collect();
        assert!(!asked.is_empty());
        for r in &asked {
            assert!(
                r.method != "GET" || r.is_look() || r.range_start().is_some_and(|s| s > 0),
                "a request from byte 0: {r:?}"
            );
            assert_eq!(r.header("cookie"), Some("session=fresh"), "{r:?}");
            assert_eq!(r.header("user-agent"), Some("browser/1"), "{r:?}");
            assert!(
                r.header("referer").is_some_and(|v| v.ends_with("/page")),
                "{r:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_download_shows_a_speed_in_its_first_progress_past_the_resume_point() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        let file = server.serve(
            "/resumed.bin",
            FileSpec::new(8 * MIB).seed(216).etag().rate(MIB),
        );
        let id = paused_at(engine, &file, 2 * MIB).await;
        let kept = engine.get(id).unwrap().downloaded;
        let mut events = engine.subscribe();
        engine.resume(id).expect("resume is accepted");
        // The first progress event that carries bytes beyond the resume point, and `list` right after it.
        let first = loop {
            match events.recv().await.expect("the engine's events go on") {
                Event::Progress { downloads } => {
                    if let Some(p) = downloads
                        .into_iter()
                        .find(|p| p.id == id && p.downloaded > kept)
                    {
                        break p;
                    }
                }
                _ => continue,
            }
        };
        let listed = engine
            .list(PageRequest::default())
            .downloads
            .into_iter()
            .find(|d| d.id == id)
            .expect("listed");
        assert!(
            first.speed > 0,
            "the first progress past {kept} bytes ({} bytes) shows 0 B/s",
            first.downloaded
        );
        assert!(
            first.eta.is_some(),
            "no time left with bytes moving: {first:?}"
        );
        assert!(
            listed.speed > 0 || listed.status != Status::Downloading,
            "list shows 0 B/s after progress: {listed:?}"
        );
        complete_exact(engine, id, &file).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_sets_the_order_queued_downloads_start_in_and_it_survives_a_restart() {
    bounded(60, async {
        let root = tempdir();
        let engine = start_engine(root.path()).await;
        set_settings(
            &engine,
            SettingsPatch {
                max_concurrent: Some(1),
                ..SettingsPatch::default()
            },
        )
        .await;
        let server = TestServer::start().await;
        let files: Vec<ServedFile> = (0..4)
            .map(|i| {
                server.serve(
                    &format!("/o{i}.bin"),
                    FileSpec::new(2 * MIB).seed(200 + i).rate(256 * KIB),
                )
            })
            .collect();
        let mut ids = Vec::new();
        for f in &files {
            ids.push(add(&engine, f, Some(1)).await);
        }
        let [a, b, c, d] = ids[..] else {
            unreachable!()
        };
        wait_status(&engine, a, Status::Downloading).await;
        assert_eq!(
            order(&engine),
            [a, b, c, d],
            "new downloads join at the bottom"
        );

        engine.move_to(d, MoveTo::Top).unwrap();
        assert_eq!(order(&engine), [d, a, b, c]);
        engine.move_to(c, MoveTo::Up).unwrap();
        assert_eq!(order(&engine), [d, a, c, b]);
        engine.move_to(d, MoveTo::Down).unwrap();
        assert_eq!(order(&engine), [a, d, c, b]);
        engine.move_to(a, MoveTo::Bottom).unwrap();
        assert_eq!(order(&engine), [d, c, b, a]);
        engine.move_to(d, MoveTo::Up).unwrap();
        engine.move_to(a, MoveTo::Down).unwrap();
        assert_eq!(order(&engine), [d, c, b, a], "the ends stay where they are");
        let err = engine.move_to(9999, MoveTo::Top).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");

        // The running download keeps its slot; when it stops, the top of the queue starts next.
        assert_eq!(engine.get(a).unwrap().status, Status::Downloading);
        engine.pause(a).unwrap();
        wait_status(&engine, d, Status::Downloading).await;
        for id in [b, c] {
            assert_eq!(engine.get(id).unwrap().status, Status::Queued);
        }
        engine.persist().await;
        stop(engine).await;

        let engine = start_engine(root.path()).await;
        assert_eq!(order(&engine), [d, c, b, a], "the order was not saved");
        wait_status(&engine, d, Status::Downloading).await;
        assert_eq!(engine.get(c).unwrap().status, Status::Queued);
        stop(engine).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_up_or_down_passes_over_finished_downloads() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        let small = server.serve("/between.bin", FileSpec::new(64 * KIB).seed(217));
        let slow = server.serve(
            "/first.bin",
            FileSpec::new(8 * MIB).seed(218).rate(256 * KIB),
        );
        let other = server.serve(
            "/last.bin",
            FileSpec::new(8 * MIB).seed(219).rate(256 * KIB),
        );
        let a = add(engine, &slow, Some(1)).await;
        let done = add(engine, &small, Some(1)).await;
        complete_exact(engine, done, &small).await;
        let b = add(engine, &other, Some(1)).await;
        assert_eq!(order(engine), [a, done, b]);
        // Up past the completed download, which does not wait in the queue: b now goes before a.
        engine.move_to(b, MoveTo::Up).unwrap();
        assert_eq!(order(engine), [b, a, done]);
        engine.move_to(a, MoveTo::Down).unwrap();
        assert_eq!(order(engine), [b, a, done], "nothing that waits is below a");
        engine.move_to(b, MoveTo::Down).unwrap();
        assert_eq!(order(engine), [a, b, done]);
        engine.pause_all();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_all_resume_all_and_clear_finished_act_on_the_whole_queue() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        let small = server.serve("/done.bin", FileSpec::new(64 * KIB).seed(210));
        let done = add(engine, &small, Some(1)).await;
        let done_path = complete_exact(engine, done, &small).await.path;
        let slow: Vec<ServedFile> = (0..3)
            .map(|i| {
                server.serve(
                    &format!("/s{i}.bin"),
                    FileSpec::new(4 * MIB).seed(211 + i).rate(512 * KIB),
                )
            })
            .collect();
        let mut ids = Vec::new();
        for f in &slow {
            ids.push(add(engine, f, Some(1)).await);
        }
        wait_downloaded(engine, ids[0], 64 * KIB).await;

        assert_eq!(engine.pause_all(), 3);
        for &id in &ids {
            assert_eq!(engine.get(id).unwrap().status, Status::Paused);
        }
        for f in &slow {
            connections_closed(f, "a paused download's").await;
        }
        assert_eq!(engine.pause_all(), 0, "nothing left to pause");

        assert_eq!(engine.resume_all(), 3);
        for &id in &ids {
            assert!(matches!(
                engine.get(id).unwrap().status,
                Status::Queued | Status::Downloading
            ));
        }
        engine.cancel(ids[2]).unwrap();
        wait_status(engine, ids[2], Status::Cancelled).await;
        // A cancelled download leaves the list once its transfer has stopped, which is when history has it.
        until(10, "the cancelled download in history", || {
            in_history(engine).contains(&ids[2])
        })
        .await;

        assert_eq!(
            engine.clear_finished(),
            2,
            "the completed and the cancelled one"
        );
        assert_eq!(order(engine), ids[..2]);
        let history = in_history(engine);
        assert!(
            history.contains(&done) && history.contains(&ids[2]),
            "history lost what was cleared: {history:?}"
        );
        assert_exact(Path::new(&done_path), &small);
        for (&id, f) in ids.iter().zip(&slow).take(2) {
            wait_status(engine, id, Status::Completed).await;
            assert_completed_exact(engine, id, f);
        }
        assert_eq!(engine.clear_finished(), 2);
        assert!(order(engine).is_empty());
    })
    .await;
}
