//! A download interrupted by a shutdown resumes when a new engine starts on the same data folder.

use std::path::Path;
use std::time::{Duration, Instant};

use protocol::{AddRequest, Status};
use sdm_tests::{FileSpec, TestServer};

use crate::support::{assert_exact, bounded, start_engine, tempdir, until, wait_for, wait_status};

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_resumes_where_the_last_one_stopped() {
    bounded(60, async {
        let root = tempdir();
        let server = TestServer::start().await;
        let file = server.serve("/long.bin", FileSpec::new(6 * MIB).seed(90).etag().rate(MIB));

        let first = start_engine(root.path()).await;
        let id = first
            .add(AddRequest {
                url: file.url().to_string(),
                threads: Some(2),
                ..AddRequest::default()
            })
            .expect("add is accepted");
        let before = wait_for(&first, id, "1 MiB downloaded", |d| d.downloaded >= MIB).await;
        first.shutdown().await;
        drop(first);
        until(5, "the old engine's connections to close", || file.active() == 0).await;
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
