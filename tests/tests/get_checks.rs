//! The expected sha256 of `sdm get --sha256`, and the bandwidth cap.

use std::time::{Duration, Instant};

use sdm_tests::{FileSpec, TestServer};

use crate::support::{assert_exact, bounded, fetch, fetch_exact, finished_files_in};

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_sha256_passes() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve("/sum.bin", FileSpec::new(3 * MIB).seed(60));
        let sha256 = file.sha256();

        fetch_exact(&file, |s| s.sha256 = Some(sha256), "download succeeds").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sha256_mismatch_is_an_error_and_leaves_no_file() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve("/sum.bin", FileSpec::new(3 * MIB).seed(61));

        let (dir, result) = fetch(&file, |s| s.sha256 = Some("0".repeat(64))).await;
        let err = result.expect_err("a wrong checksum cannot succeed");

        assert!(
            !dir.path().join("sum.bin").exists(),
            "the final file exists after `{err:#}`"
        );
        assert!(
            finished_files_in(dir.path()).is_empty(),
            "a checksum mismatch left {:?}",
            finished_files_in(dir.path())
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_cap_holds() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve("/capped.bin", FileSpec::new(4 * MIB).seed(62));
        let started = Instant::now();

        let (_dir, result) = fetch(&file, |s| {
            s.threads = 4;
            s.limit = MIB;
        })
        .await;
        let path = result.expect("download succeeds");

        // 4 MiB at 1 MiB/s is 4 s; a small initial burst is fair, a cap that lets twice the rate through is not.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(3400),
            "4 MiB at 1 MiB/s took only {took:?}"
        );
        assert_exact(&path, &file);
    })
    .await;
}
