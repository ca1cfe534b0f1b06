//! A download interrupted by a shutdown resumes when a new engine starts on the same data folder.

use std::path::Path;
use std::time::{Duration, Instant};

use protocol::{DownloadId, DownloadInfo, Status};
use sdm_tests::{FileSpec, ServedFile, TestServer};

use crate::support::{
    add, assert_exact, bounded, connections_closed, names_in, set_settings, start_engine, stop,
    tempdir, until, wait_downloaded, wait_for, wait_status,
};

const MIB: u64 = 1024 * 1024;

/// Start an engine in `root`, add `file` with `threads` connections, and stop the engine once `bytes` are down.
/// Returns the download's id and its state when it was stopped.
async fn interrupt_at(
    root: &Path,
    file: &ServedFile,
    threads: u32,
    bytes: u64,
) -> (DownloadId, DownloadInfo) {
    let first = start_engine(root).await;
    let id = add(&first, file, Some(threads)).await;
    let before = wait_downloaded(&first, id, bytes).await;
    stop(first).await;
    (id, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_resumes_where_the_last_one_stopped() {
    bounded(60, async {
        let root = tempdir();
        let server = TestServer::start().await;
        let file = server.serve("/long.bin", FileSpec::new(6 * MIB).seed(90).etag().rate(MIB));

        let (id, before) = interrupt_at(root.path(), &file, 2, MIB).await;
        connections_closed(&file, "the old engine's").await;
        // Give a lingering task of the old engine the chance to show itself before the new one starts.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent_before_restart = file.bytes_sent();

        let restarted_at = Instant::now();
        let second = start_engine(root.path()).await;
        let info = wait_status(&second, id, Status::Completed).await;

        assert_exact(Path::new(&info.path), &file);
        assert_eq!(info.url, file.url());
        let after: Vec<_> = file.gets().into_iter().filter(|r| r.at >= restarted_at).collect();
        assert!(
            after.iter().any(|r| r.range_start() > Some(0)),
            "no ranged request from a non-zero offset after the restart: {after:?}"
        );
        let refetched = file.bytes_sent_since(restarted_at);
        assert!(
            refetched + before.downloaded / 2 < file.len(),
            "after the restart the server sent {refetched} bytes of {} although {} were kept (and {sent_before_restart} \
             sent before)",
            file.len(),
            before.downloaded
        );
        second.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_download_stays_paused_across_a_restart() {
    bounded(60, async {
        let root = tempdir();
        let server = TestServer::start().await;
        let file = server.serve(
            "/held.bin",
            FileSpec::new(4 * MIB).seed(91).etag().rate(MIB),
        );

        let first = start_engine(root.path()).await;
        let id = add(&first, &file, Some(2)).await;
        wait_downloaded(&first, id, MIB / 2).await;
        first.pause(id).expect("pause is accepted");
        let paused = wait_status(&first, id, Status::Paused).await;
        stop(first).await;

        let second = start_engine(root.path()).await;
        let requests_before = file.requests().len();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let info = second.get(id).expect("the download survived the restart");
        assert_eq!(info.status, Status::Paused);
        assert_eq!(
            file.requests().len(),
            requests_before,
            "a paused download touched the server after the restart"
        );
        assert!(
            info.downloaded >= paused.downloaded.min(MIB / 2),
            "{info:?}"
        );

        second.resume(id).expect("resume is accepted");
        let info = wait_status(&second, id, Status::Completed).await;
        assert_exact(Path::new(&info.path), &file);
        second.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_while_stopped_is_not_spliced() {
    bounded(60, async {
        let root = tempdir();
        let server = TestServer::start().await;
        let file = server.serve(
            "/edited.bin",
            FileSpec::new(4 * MIB)
                .seed(92)
                .etag()
                .last_modified()
                .rate(MIB),
        );

        let (id, _) = interrupt_at(root.path(), &file, 2, MIB).await;
        file.change_content();

        let second = start_engine(root.path()).await;
        let info = wait_for(&second, id, "a finished status", |d| d.status.is_finished()).await;

        match info.status {
            Status::Completed => {
                let got = std::fs::read(&info.path).expect("read the result");
                assert!(
                    got == file.bytes_of_version(1),
                    "completed with something other than the new version (old version: {})",
                    got == file.bytes_of_version(0)
                );
            }
            _ => assert!(
                !Path::new(&info.path).exists(),
                "ended as {:?} but left {}",
                info.status,
                info.path
            ),
        }
        second.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_file_is_set_aside_with_a_warning() {
    bounded(30, async {
        let root = tempdir();
        let data = root.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(
            data.join("state.json"),
            b"{\"version\":1,\"downloads\":[{\"id\":",
        )
        .unwrap();
        std::fs::write(data.join("settings.json"), b"\x00\x00\x00").unwrap();

        let engine = start_engine(root.path()).await;

        assert!(
            !engine.warnings().is_empty(),
            "damaged files were loaded without a word"
        );
        assert_eq!(engine.list(Default::default()).total, 0);
        assert_eq!(engine.settings(), protocol::Settings::default());
        let kept: Vec<String> = names_in(&data)
            .into_iter()
            .filter(|n| n.contains("damaged"))
            .collect();
        assert!(
            !kept.is_empty(),
            "the damaged files were not kept aside: {:?}",
            names_in(&data)
        );
        // The engine still works after that.
        let server = TestServer::start().await;
        let file = server.serve("/after.bin", FileSpec::new(MIB).seed(93));
        let id = add(&engine, &file, None).await;
        let info = wait_status(&engine, id, Status::Completed).await;
        assert_exact(Path::new(&info.path), &file);
        engine.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_file_deleted_while_stopped_means_starting_over() {
    bounded(60, async {
        let root = tempdir();
        let server = TestServer::start().await;
        let file = server.serve("/lost.bin", FileSpec::new(4 * MIB).seed(94).rate(MIB));

        let (id, _) = interrupt_at(root.path(), &file, 2, MIB / 2).await;
        let downloads = root.path().join("downloads");
        for name in names_in(&downloads) {
            std::fs::remove_file(downloads.join(name)).unwrap();
        }

        let second = start_engine(root.path()).await;
        let info = wait_for(&second, id, "a finished status", |d| d.status.is_finished()).await;

        match info.status {
            Status::Completed => assert_exact(Path::new(&info.path), &file),
            _ => assert!(
                !Path::new(&info.path).exists(),
                "ended as {:?} ({:?}) but left {}",
                info.status,
                info.error,
                info.path
            ),
        }
        second.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_history_and_finished_downloads_survive_a_restart() {
    bounded(60, async {
        let root = tempdir();
        let server = TestServer::start().await;
        let file = server.serve("/done.bin", FileSpec::new(MIB).seed(95));

        let first = start_engine(root.path()).await;
        set_settings(
            &first,
            protocol::SettingsPatch {
                max_concurrent: Some(5),
                bandwidth_limit: Some(123_456),
                ..Default::default()
            },
        )
        .await;
        set_settings(
            &first,
            protocol::SettingsPatch {
                bandwidth_limit: Some(0),
                ..Default::default()
            },
        )
        .await;
        let id = add(&first, &file, None).await;
        let done = wait_status(&first, id, Status::Completed).await;
        let history = first.history(Default::default()).unwrap();
        stop(first).await;

        let second = start_engine(root.path()).await;

        assert!(second.warnings().is_empty(), "{:?}", second.warnings());
        assert_eq!(second.settings().max_concurrent, 5);
        assert_eq!(second.settings().bandwidth_limit, 0);
        assert_eq!(second.history(Default::default()).unwrap(), history);
        let again = second
            .get(id)
            .expect("the completed download is still listed");
        assert_eq!(again.status, Status::Completed);
        assert_eq!(again.path, done.path);
        let requests = file.requests().len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            file.requests().len(),
            requests,
            "a completed download was fetched again"
        );
        let next = add(&second, &file, None).await;
        assert_ne!(next, id, "an id was reused after the restart");
        wait_status(&second, next, Status::Completed).await;
        second.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_with_state_behind_the_part_file_still_resumes_exact() {
    bounded(60, async {
        let root = tempdir();
        let server = TestServer::start().await;
        let file = server.serve(
            "/crashy.bin",
            FileSpec::new(6 * MIB).seed(96).etag().rate(MIB),
        );
        let state = root.path().join("data").join("state.json");

        let first = start_engine(root.path()).await;
        let id = add(&first, &file, Some(3)).await;
        wait_downloaded(&first, id, MIB).await;
        until(5, "a state file with progress", || state.exists()).await;
        // The state as a crash could leave it: written a while ago, while the part file went on growing.
        let snapshot = std::fs::read(&state).unwrap();
        wait_downloaded(&first, id, 2 * MIB).await;
        stop(first).await;
        std::fs::write(&state, &snapshot).unwrap();

        let second = start_engine(root.path()).await;
        let info = wait_status(&second, id, Status::Completed).await;

        assert_exact(Path::new(&info.path), &file);
        second.shutdown().await;
    })
    .await;
}
