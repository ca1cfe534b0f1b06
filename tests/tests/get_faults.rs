//! `oneshot::get` against a server that fails: transient errors are retried to an exact file, permanent ones end
//! quickly with nothing at the final path, and lying headers never turn into wrong bytes.

use std::time::{Duration, Instant};

use sdm_tests::server::{TlsFront, test_ca_der};
use sdm_tests::{ALWAYS, FileSpec, NoLength, TestServer};

use crate::support::{
    bounded, fetch, fetch_exact, fetch_exact_or_clean_error, finished_files_in, on_every_body_path,
    serve_and_fetch_exact, serve_and_fetch_exact_or_clean_error,
};

const MIB: u64 = 1024 * 1024;

/// Serve `spec` (a file that answers 503 with `Retry-After: 1` a few times), download it over both body paths, and
/// check each download came out exact and waited the second it was told to.
async fn busy_503_is_retried_after_retry_after(path: &str, spec: FileSpec) {
    on_every_body_path(30, path, async |server, path, splice| {
        let file = server.serve(path, spec.clone());
        let started = Instant::now();

        fetch_exact(
            &file,
            |s| s.splice = splice,
            "download succeeds after the 503s",
        )
        .await;

        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "`Retry-After: 1` was not waited for ({:?})",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_503_with_retry_after_is_retried() {
    busy_503_is_retried_after_retry_after(
        "/busy.bin",
        FileSpec::new(2 * MIB)
            .seed(11)
            .status_first(2, 503)
            .retry_after("1"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_503_on_the_connections_is_retried_after_retry_after() {
    // The first request (the probe) goes through; the next three, from the transfer's connections, are refused.
    busy_503_is_retried_after_retry_after(
        "/busy-later.bin",
        FileSpec::new(4 * MIB)
            .seed(22)
            .status_after(1, 3, 503)
            .retry_after("1"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_429_is_ridden_out() {
    // The probe goes through, then nine requests in a row are refused without a hint of when to come back: about
    // three for each connection, whose backoffs add up to 7 s.
    serve_and_fetch_exact(
        40,
        "/storm.bin",
        FileSpec::new(4 * MIB).seed(12).status_after(1, 9, 429),
        |s| s.retries = 10,
        "download succeeds after the 429s",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_mid_body_are_resumed() {
    serve_and_fetch_exact(
        30,
        "/cut.bin",
        FileSpec::new(8 * MIB).seed(13).cut_after(300_000, 3),
        |_| {},
        "download succeeds",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_single_connection_download_resumes() {
    on_every_body_path(30, "/cut1.bin", async |server, path, splice| {
        let file = server.serve(
            path,
            FileSpec::new(4 * MIB).seed(14).cut_after(1_000_000, 2),
        );

        fetch_exact(
            &file,
            |s| {
                s.threads = 1;
                s.splice = splice;
            },
            "download succeeds",
        )
        .await;

        assert!(
            file.gets().iter().any(|r| r.range_start() > Some(0)),
            "after a cut the download restarted from zero instead of resuming"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_without_ranges_starts_over() {
    serve_and_fetch_exact(
        30,
        "/cut-plain.bin",
        FileSpec::new(3 * MIB)
            .seed(26)
            .no_ranges()
            .cut_after(MIB, 1),
        |_| {},
        "download succeeds",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_chunked_stream_is_noticed_and_started_over() {
    // A chunked body cut before its last chunk is visibly incomplete, unlike a close-delimited one.
    serve_and_fetch_exact(
        30,
        "/cut-chunked.bin",
        FileSpec::new(3 * MIB)
            .seed(27)
            .no_length(NoLength::Chunked)
            .cut_after(MIB, 1),
        |_| {},
        "download succeeds",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_that_each_make_progress_do_not_use_up_the_retries() {
    // Every response is cut at 512 KiB: each connection is cut three times, more than its two retries, but every
    // cut comes after progress.
    serve_and_fetch_exact(
        40,
        "/choppy.bin",
        FileSpec::new(4 * MIB)
            .seed(28)
            .cut_after(512 * 1024, ALWAYS),
        |s| {
            s.threads = 2;
            s.retries = 2;
        },
        "download succeeds",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_connection_is_dropped_and_retried() {
    serve_and_fetch_exact(
        40,
        "/stall.bin",
        FileSpec::new(4 * MIB).seed(15).stall_after(100_000, 1),
        |s| s.stall_timeout = Duration::from_secs(2),
        "download succeeds despite the stall",
    )
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

        let (_dir, result) =
            fetch_exact_or_clean_error(&file, |s| s.stall_timeout = Duration::from_secs(2)).await;

        result.expect("download succeeds after the unanswered probe");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_gets_no_answer_is_retried() {
    // The probe is answered; the next two requests (the transfer's connections) never are.
    serve_and_fetch_exact(
        40,
        "/deaf-later.bin",
        FileSpec::new(4 * MIB).seed(24).hang_after(1, 2),
        |s| s.stall_timeout = Duration::from_secs(2),
        "download succeeds despite the silent connections",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_shorter_than_the_body_is_not_trusted_blindly() {
    serve_and_fetch_exact_or_clean_error(
        30,
        "/underlength.bin",
        FileSpec::new(4 * MIB).seed(25).length_lie(-1000, 2),
        |_| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_gone_fail_fast_and_leave_nothing() {
    bounded(30, async {
        let server = TestServer::start().await;
        for (path, status) in [("/missing.bin", 404), ("/gone.bin", 410)] {
            let file = server.serve(path, FileSpec::new(MIB).status_always(status));
            let started = Instant::now();

            let (dir, result) = fetch(&file, |s| s.retries = 5).await;
            let err = result.expect_err("a missing file cannot download");

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
    serve_and_fetch_exact(
        30,
        "/wrong.bin",
        FileSpec::new(4 * MIB).seed(16).wrong_content_range(2),
        |_| {},
        "download succeeds once the server stops lying",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_bytes_past_the_range_do_not_corrupt() {
    serve_and_fetch_exact(
        30,
        "/extra.bin",
        FileSpec::new(4 * MIB).seed(17).extra_bytes(10_000, 3),
        |_| {},
        "download succeeds",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_body_then_eof_is_resumed() {
    serve_and_fetch_exact(
        30,
        "/short.bin",
        FileSpec::new(4 * MIB).seed(18).short_body(50_000, 3),
        |_| {},
        "download succeeds",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_that_promises_too_much_is_resumed() {
    serve_and_fetch_exact_or_clean_error(
        30,
        "/lie.bin",
        FileSpec::new(4 * MIB).seed(19).length_lie(1000, 2),
        |_| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_error_page_never_lands_in_the_file() {
    serve_and_fetch_exact_or_clean_error(
        30,
        "/html.bin",
        FileSpec::new(4 * MIB).seed(20).html_on_range(1),
        |_| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_always_cuts_ends_in_a_clean_error() {
    on_every_body_path(60, "/hopeless.bin", async |server, path, splice| {
        let file = server.serve(
            path,
            FileSpec::new(4 * MIB).seed(21).short_body(4 * MIB, ALWAYS),
        );

        let (dir, result) = fetch(&file, |s| {
            s.retries = 2;
            s.splice = splice;
        })
        .await;
        let err = result.expect_err("a server that never sends a byte cannot succeed");

        assert!(
            finished_files_in(dir.path()).is_empty(),
            "a failed download left a file behind: {err:#}"
        );
    })
    .await;
}

/// Over https on the own-socket path, a body cut without TLS's `close_notify` (the TCP connection just ends, as when
/// a server crashes) is a network error retried from where it stopped: the file comes out exact, never short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_body_cut_without_close_notify_is_resumed() {
    sdm::engine::probe::trust_extra_roots(vec![test_ca_der()]);
    bounded(60, async {
        let server = TestServer::start().await;
        let front = TlsFront::start_abrupt(&server).await;
        for threads in [1, 4] {
            let file = server
                .serve(
                    &format!("/abrupt{threads}.bin"),
                    FileSpec::new(4 * MIB).seed(31).cut_after(1_000_000, 2),
                )
                .via(&front);

            fetch_exact(&file, |s| s.threads = threads, "download succeeds").await;

            assert!(
                file.gets().iter().any(|r| r.range_start() > Some(0)),
                "{threads} connections: after a cut the download did not resume"
            );
        }
    })
    .await;
}
