//! `transfer::get` against a server that fails: transient errors are retried to an exact file, permanent ones end
//! quickly with nothing at the final path, and lying headers never turn into wrong bytes.

use std::time::{Duration, Instant};

use sdm_tests::{ALWAYS, FileSpec, NoLength, TestServer};

use crate::support::{
    assert_exact, assert_exact_or_clean_error, bounded, finished_files_in, get, spec, tempdir,
};

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_503_with_retry_after_is_retried() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/busy.bin",
            FileSpec::new(2 * MIB)
                .seed(11)
                .status_first(2, 503)
                .retry_after("1"),
        );
        let dir = tempdir();
        let started = Instant::now();

        let path = get(spec(file.url(), dir.path()))
            .await
            .expect("download succeeds after the 503s");

        assert_exact(&path, &file);
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "`Retry-After: 1` was not waited for ({:?})",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_503_on_the_connections_is_retried_after_retry_after() {
    bounded(30, async {
        let server = TestServer::start().await;
        // The first request (the probe) goes through; the next three, from the transfer's connections, are refused.
        let file = server.serve(
            "/busy-later.bin",
            FileSpec::new(4 * MIB)
                .seed(22)
                .status_after(1, 3, 503)
                .retry_after("1"),
        );
        let dir = tempdir();
        let started = Instant::now();

        let path = get(spec(file.url(), dir.path()))
            .await
            .expect("download succeeds after the 503s");

        assert_exact(&path, &file);
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "`Retry-After: 1` was not waited for ({:?})",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_429_is_ridden_out() {
    bounded(40, async {
        let server = TestServer::start().await;
        // The probe goes through, then twelve requests in a row are refused without a hint of when to come back.
        let file = server.serve(
            "/storm.bin",
            FileSpec::new(4 * MIB).seed(12).status_after(1, 12, 429),
        );
        let dir = tempdir();
        let mut s = spec(file.url(), dir.path());
        s.retries = 10;

        let path = get(s).await.expect("download succeeds after the 429s");

        assert_exact(&path, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_mid_body_are_resumed() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/cut.bin",
            FileSpec::new(8 * MIB).seed(13).cut_after(300_000, 3),
        );
        let dir = tempdir();

        let path = get(spec(file.url(), dir.path()))
            .await
            .expect("download succeeds");

        assert_exact(&path, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_single_connection_download_resumes() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/cut1.bin",
            FileSpec::new(4 * MIB).seed(14).cut_after(1_000_000, 2),
        );
        let dir = tempdir();
        let mut s = spec(file.url(), dir.path());
        s.threads = 1;

        let path = get(s).await.expect("download succeeds");

        assert_exact(&path, &file);
        assert!(
            file.gets().iter().any(|r| r.range_start() > Some(0)),
            "after a cut the download restarted from zero instead of resuming"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_without_ranges_starts_over() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/cut-plain.bin",
            FileSpec::new(3 * MIB)
                .seed(26)
                .no_ranges()
                .cut_after(MIB, 1),
        );
        let dir = tempdir();

        let path = get(spec(file.url(), dir.path()))
            .await
            .expect("download succeeds");

        assert_exact(&path, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_chunked_stream_is_noticed_and_started_over() {
    bounded(30, async {
        let server = TestServer::start().await;
        // A chunked body cut before its last chunk is visibly incomplete, unlike a close-delimited one.
        let file = server.serve(
            "/cut-chunked.bin",
            FileSpec::new(3 * MIB)
                .seed(27)
                .no_length(NoLength::Chunked)
                .cut_after(MIB, 1),
        );
        let dir = tempdir();

        let path = get(spec(file.url(), dir.path()))
            .await
            .expect("download succeeds");

        assert_exact(&path, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_that_each_make_progress_do_not_use_up_the_retries() {
    bounded(40, async {
        let server = TestServer::start().await;
        // Every response is cut at 512 KiB: each connection is cut three times, more than its two retries, but
        // every cut comes after progress.
        let file = server.serve(
            "/choppy.bin",
            FileSpec::new(4 * MIB)
                .seed(28)
                .cut_after(512 * 1024, ALWAYS),
        );
        let dir = tempdir();
        let mut s = spec(file.url(), dir.path());
        s.threads = 2;
        s.retries = 2;

        let path = get(s).await.expect("download succeeds");

        assert_exact(&path, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_connection_is_dropped_and_retried() {
    bounded(40, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/stall.bin",
            FileSpec::new(4 * MIB).seed(15).stall_after(100_000, 1),
        );
        let dir = tempdir();
        let mut s = spec(file.url(), dir.path());
        s.stall_timeout = Duration::from_secs(2);

        let path = get(s).await.expect("download succeeds despite the stall");

        assert_exact(&path, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_gets_no_answer_times_out() {
    bounded(40, async {
        let server = TestServer::start().await;
        // The first request (the probe's HEAD) is read and never answered.
        let file = server.serve(
            "/deaf.bin",
            FileSpec::new(2 * MIB).seed(23).hang_after(0, 1),
        );
        let dir = tempdir();
        let mut s = spec(file.url(), dir.path());
        s.stall_timeout = Duration::from_secs(2);

        let result = get(s).await;

        assert_exact_or_clean_error(&result, dir.path(), &file);
        result.expect("download succeeds after the unanswered probe");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_gets_no_answer_is_retried() {
    bounded(40, async {
        let server = TestServer::start().await;
        // The probe is answered; the next two requests (the transfer's connections) never are.
        let file = server.serve(
            "/deaf-later.bin",
            FileSpec::new(4 * MIB).seed(24).hang_after(1, 2),
        );
        let dir = tempdir();
        let mut s = spec(file.url(), dir.path());
        s.stall_timeout = Duration::from_secs(2);

        let path = get(s)
            .await
            .expect("download succeeds despite the silent connections");

        assert_exact(&path, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_shorter_than_the_body_is_not_trusted_blindly() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/underlength.bin",
            FileSpec::new(4 * MIB).seed(25).length_lie(-1000, 2),
        );
        let dir = tempdir();

        let result = get(spec(file.url(), dir.path())).await;

        assert_exact_or_clean_error(&result, dir.path(), &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_gone_fail_fast_and_leave_nothing() {
    bounded(30, async {
        let server = TestServer::start().await;
        for (path, status) in [("/missing.bin", 404), ("/gone.bin", 410)] {
            let file = server.serve(path, FileSpec::new(MIB).status_always(status));
            let dir = tempdir();
            let mut s = spec(file.url(), dir.path());
            s.retries = 5;
            let started = Instant::now();

            let err = get(s).await.expect_err("a missing file cannot download");

            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{status} took {:?} to fail: it is not worth retrying",
                started.elapsed()
            );
            assert!(!dir.path().join(&path[1..]).exists());
            assert!(
                finished_files_in(dir.path()).is_empty(),
                "{status} left a file behind: {err:#}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_content_range_is_not_written_at_the_wrong_place() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/wrong.bin",
            FileSpec::new(4 * MIB).seed(16).wrong_content_range(2),
        );
        let dir = tempdir();

        let path = get(spec(file.url(), dir.path()))
            .await
            .expect("download succeeds once the server stops lying");

        assert_exact(&path, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_bytes_past_the_range_do_not_corrupt() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/extra.bin",
            FileSpec::new(4 * MIB).seed(17).extra_bytes(10_000, 3),
        );
        let dir = tempdir();

        let path = get(spec(file.url(), dir.path()))
            .await
            .expect("download succeeds");

        assert_exact(&path, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_body_then_eof_is_resumed() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/short.bin",
            FileSpec::new(4 * MIB).seed(18).short_body(50_000, 3),
        );
        let dir = tempdir();

        let path = get(spec(file.url(), dir.path()))
            .await
            .expect("download succeeds");

        assert_exact(&path, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_that_promises_too_much_is_resumed() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/lie.bin",
            FileSpec::new(4 * MIB).seed(19).length_lie(1000, 2),
        );
        let dir = tempdir();

        let result = get(spec(file.url(), dir.path())).await;

        assert_exact_or_clean_error(&result, dir.path(), &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_error_page_never_lands_in_the_file() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/html.bin",
            FileSpec::new(4 * MIB).seed(20).html_on_range(1),
        );
        let dir = tempdir();

        let result = get(spec(file.url(), dir.path())).await;

        assert_exact_or_clean_error(&result, dir.path(), &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_always_cuts_ends_in_a_clean_error() {
    bounded(60, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/hopeless.bin",
            FileSpec::new(4 * MIB).seed(21).short_body(4 * MIB, ALWAYS),
        );
        let dir = tempdir();
        let mut s = spec(file.url(), dir.path());
        s.retries = 2;

        let err = get(s)
            .await
            .expect_err("a server that never sends a byte cannot succeed");

        assert!(
            finished_files_in(dir.path()).is_empty(),
            "a failed download left a file behind: {err:#}"
        );
    })
    .await;
}
