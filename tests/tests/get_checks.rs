//! The expected sha256 of `sdm get --sha256`, and the bandwidth cap.

use std::time::{Duration, Instant};

use sdm_tests::{FileSpec, TestServer};

use crate::support::{assert_exact, bounded, finished_files_in, get, spec, tempdir};

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_sha256_passes() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve("/sum.bin", FileSpec::new(3 * MIB).seed(60));
        let dir = tempdir();
        let mut s = spec(file.url(), dir.path());
        s.sha256 = Some(file.sha256());

        let path = get(s).await.expect("download succeeds");

        assert_exact(&path, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sha256_mismatch_is_an_error_and_leaves_no_file() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve("/sum.bin", FileSpec::new(3 * MIB).seed(61));
        let dir = tempdir();
        let mut s = spec(file.url(), dir.path());
        s.sha256 = Some("0".repeat(64));

        let err = get(s).await.expect_err("a wrong checksum cannot succeed");

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
        let dir = tempdir();
        let mut s = spec(file.url(), dir.path());
        s.threads = 4;
        s.limit = MIB;
        let started = Instant::now();

        let path = get(s).await.expect("download succeeds");

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
