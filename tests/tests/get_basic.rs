//! `oneshot::get` against a well-behaved server.

use std::collections::BTreeSet;

use sdm_tests::server::{Cert, TlsFront, test_ca_der};
use sdm_tests::{FileSpec, NoLength, TestServer};

use crate::support::{
    assert_exact, bounded, fetch_exact, fetch_exact_or_clean_error, get, on_every_body_path,
    serve_and_fetch_exact, spec, tempdir,
};

const MIB: u64 = 1024 * 1024;

/// Serve `file_spec` at `path`, download it to the explicit output path `out` (folders below a fresh temporary one), and
/// check it landed exactly there, exact.
async fn serve_and_fetch_to_exactly(path: &str, file_spec: FileSpec, out: &[&str]) {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(path, file_spec);
        let dir = tempdir();
        let out = out
            .iter()
            .fold(dir.path().to_path_buf(), |p, part| p.join(part));

        let path = get(spec(file.url(), &out))
            .await
            .expect("download succeeds");

        assert_eq!(path, out);
        assert_exact(&out, &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_comes_down_over_several_ranged_connections() {
    bounded(60, async {
        let server = TestServer::start().await;
        // A per-connection cap, so one connection alone could not finish quickly and splitting pays.
        let file = server.serve("/big.bin", FileSpec::new(20 * MIB).seed(1).rate(8 * MIB));
        let dir = tempdir();

        let mut snapshots = 0;
        let mut last_seen = 0;
        let path = sdm::engine::oneshot::get(spec(file.url(), dir.path()), |s| {
            snapshots += 1;
            last_seen = s.downloaded;
        })
        .await
        .expect("download succeeds");

        assert_eq!(path, dir.path().join("big.bin"));
        assert_exact(&path, &file);
        assert!(last_seen <= file.len());
        let gets = file.gets();
        let starts: BTreeSet<u64> = gets.iter().filter_map(|r| r.range_start()).collect();
        assert!(
            starts.len() >= 2,
            "expected several ranged requests, saw ranges starting at {starts:?}"
        );
        for r in &gets {
            assert_eq!(
                r.header("accept-encoding"),
                Some("identity"),
                "a GET without `Accept-Encoding: identity`: {r:?}"
            );
        }
        assert!(
            file.peak_data_connections(256 * 1024) >= 2,
            "the ranged requests never overlapped: one connection at a time"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_ranges_gets_one_connection() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/plain.bin",
            FileSpec::new(3 * MIB).seed(2).no_ranges().rate(4 * MIB),
        );

        fetch_exact(&file, |_| {}, "download succeeds").await;

        assert_eq!(
            file.peak_data_connections(256 * 1024),
            1,
            "several connections pulled the whole file from a server without ranges"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_without_length_is_exact() {
    serve_and_fetch_exact(
        30,
        "/chunked.bin",
        FileSpec::new(3 * MIB + 17)
            .seed(3)
            .no_length(NoLength::Chunked),
        |_| {},
        "download succeeds",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_body_without_length_is_exact() {
    serve_and_fetch_exact(
        30,
        "/eof.bin",
        FileSpec::new(2 * MIB + 5)
            .seed(4)
            .no_length(NoLength::CloseDelimited),
        |_| {},
        "download succeeds",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_is_not_split() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve("/small.txt", FileSpec::new(10_000).seed(5));

        fetch_exact(&file, |_| {}, "download succeeds").await;

        assert_eq!(
            file.peak_active(),
            1,
            "a 10 kB file was fetched over several connections"
        );
        let split: Vec<_> = file
            .gets()
            .into_iter()
            .filter(|r| r.range_start() > Some(0))
            .collect();
        assert!(split.is_empty(), "a 10 kB file was split: {split:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_is_created_empty() {
    serve_and_fetch_exact(
        30,
        "/empty.txt",
        FileSpec::new(0),
        |_| {},
        "download succeeds",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_followed_and_a_loop_is_an_error() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve("/real.bin", FileSpec::new(2 * MIB).seed(6));
        server.redirect("/go", "/real.bin");
        server.redirect("/ping", "/pong");
        server.redirect("/pong", "/ping");
        let dir = tempdir();

        let path = get(spec(&server.url("/go"), dir.path()))
            .await
            .expect("download succeeds");
        assert_exact(&path, &file);

        let looped = tempdir();
        let err = get(spec(&server.url("/ping"), looped.path()))
            .await
            .expect_err("a redirect loop cannot succeed");
        assert!(
            crate::support::finished_files_in(looped.path()).is_empty(),
            "a redirect loop left a file: {err:#}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_referrer_and_user_agent_reach_every_request() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/private.bin",
            FileSpec::new(4 * MIB)
                .seed(7)
                .require_cookie("session=s3cr3t"),
        );
        let headers = vec![
            ("Cookie".into(), "session=s3cr3t".into()),
            ("Referer".into(), "http://example.test/page".into()),
            ("User-Agent".into(), "Browser/1.0".into()),
        ];

        fetch_exact(&file, |s| s.headers = headers, "download succeeds").await;

        for r in file.requests() {
            assert_eq!(r.header("cookie"), Some("session=s3cr3t"), "{r:?}");
            assert_eq!(
                r.header("referer"),
                Some("http://example.test/page"),
                "{r:?}"
            );
            assert_eq!(r.header("user-agent"), Some("Browser/1.0"), "{r:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_cookie_is_a_clean_error() {
    bounded(30, async {
        let server = TestServer::start().await;
        server.serve(
            "/private.bin",
            FileSpec::new(MIB).require_cookie("session=s3cr3t"),
        );
        let dir = tempdir();

        let err = get(spec(&server.url("/private.bin"), dir.path()))
            .await
            .expect_err("a 403 cannot succeed");

        assert!(
            crate::support::finished_files_in(dir.path()).is_empty(),
            "a 403 left a file: {err:#}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_output_path_is_used_as_is() {
    serve_and_fetch_to_exactly(
        "/named.bin",
        FileSpec::new(MIB)
            .seed(8)
            .content_disposition("attachment; filename=\"server.bin\""),
        &["chosen.dat"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_segment_is_split_among_free_connections() {
    bounded(60, async {
        let server = TestServer::start().await;
        // The last quarter (4 MiB, enough to be worth splitting) is served at 512 KiB/s per connection: alone, its
        // first connection would need 8 s.
        let slow_from = 12 * MIB;
        let file = server.serve(
            "/tail.bin",
            FileSpec::new(16 * MIB)
                .seed(9)
                .slow_range(slow_from, 512 * 1024),
        );

        fetch_exact(&file, |s| s.threads = 4, "download succeeds").await;

        let inside: Vec<u64> = file
            .gets()
            .iter()
            .filter_map(|r| r.range_start())
            .filter(|&a| a > slow_from + 256 * 1024)
            .collect();
        assert!(
            !inside.is_empty(),
            "the slow last segment was never split: ranges started at {:?}",
            file.gets()
                .iter()
                .filter_map(|r| r.range_start())
                .collect::<Vec<_>>()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_advertised_but_ignored_fall_back_to_one_stream() {
    serve_and_fetch_exact(
        30,
        "/cdn.bin",
        FileSpec::new(4 * MIB)
            .seed(10)
            .ignore_ranges()
            .rate(8 * MIB),
        |_| {},
        "download succeeds",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_caps_ranges_is_asked_for_the_rest() {
    on_every_body_path(30, "/capped.bin", async |server, path, splice| {
        // Every ranged answer stops after 256 KiB, with an honest `Content-Range` saying so.
        let file = server.serve(path, FileSpec::new(4 * MIB).seed(11).max_range(256 * 1024));

        let (_dir, result) = fetch_exact_or_clean_error(&file, |s| {
            s.threads = 4;
            // Every answer is valid, so no retry is needed; few retries keep a failure quick.
            s.retries = 2;
            s.splice = splice;
        })
        .await;

        result.expect("a server that serves ranges in pieces can still be downloaded");
        // Each answer is read to its end, so its connection carries the next request (keep-alive): 4
        // connections and the probe's. hyper puts a connection back in its pool from a task of its own, so on a
        // busy machine a request may beat it there and open one more; without reuse there would be one per GET.
        // Through reqwest the probe's answer, unranged, carries the first MiB and the other three take twelve
        // ranges; over the own path the four take sixteen.
        let gets = file.gets();
        let conns: BTreeSet<u64> = gets.iter().map(|r| r.conn).collect();
        let most = if splice { 5 } else { 8 };
        assert!(
            conns.len() <= most && gets.len() >= 13,
            "{} requests over {} connections (splice: {splice})",
            gets.len(),
            conns.len()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_open_while_the_probe_is_out() {
    bounded(30, async {
        let server = TestServer::start().await;
        // A server a long way off: each GET takes 400 ms to answer.
        let delay = std::time::Duration::from_millis(400);
        let file = server.serve("/far.bin", FileSpec::new(4 * MIB).seed(12).get_delay(delay));

        fetch_exact(&file, |s| s.threads = 4, "download succeeds").await;

        // Each ranged GET goes out on a connection that was opened before the probe's answer came back, so on a long
        // link it saves a round trip. Without that, every connection would be opened after the probe's answer. The
        // probe is the one GET without a range, dropped once it has told the size: the four connections carry the file.
        let (probe, gets): (Vec<_>, Vec<_>) =
            file.gets().into_iter().partition(|r| r.range().is_none());
        let answered = probe
            .first()
            .and_then(|p| p.at.checked_add(delay))
            .expect("a probe");
        let conns: BTreeSet<u64> = gets.iter().map(|r| r.conn).collect();
        assert!(
            probe.len() == 1 && conns.len() == 4 && gets.iter().all(|r| r.accepted < answered),
            "GETs over {} connections, accepted {:?} after the probe's answer",
            conns.len(),
            gets.iter()
                .map(|r| r.accepted.saturating_duration_since(answered))
                .collect::<Vec<_>>()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_requests_redirected_elsewhere_are_followed() {
    bounded(30, async {
        let server = TestServer::start().await;
        // A front that sends every ranged GET to a mirror, as download redirectors do: the splice path cannot carry
        // a redirect, so it hands the transfer to reqwest, which follows it.
        let spec = FileSpec::new(4 * MIB).seed(31);
        let mirror = server.serve("/mirror/file.bin", spec.clone());
        let front = server.serve("/file.bin", spec.redirect_ranges("/mirror/file.bin"));

        fetch_exact(&front, |_| {}, "download succeeds through the redirects").await;

        let ranged = |f: &sdm_tests::ServedFile| {
            f.gets()
                .iter()
                .filter(|r| r.range_start().is_some())
                .count()
        };
        assert!(ranged(&front) >= 1, "no ranged GET reached the front");
        assert!(
            ranged(&mirror) >= 2,
            "the ranged GETs did not go on to the mirror: {:?}",
            mirror.gets()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_stay_with_their_host_across_a_redirect() {
    bounded(30, async {
        let server = TestServer::start().await;
        let port = server.addr().port();
        // `localhost` is the same server under another host name: a different site as far as cookies go.
        let file = server.serve("/file.bin", FileSpec::new(2 * MIB).seed(12));
        server.redirect("/go", &format!("http://localhost:{port}/file.bin"));
        let dir = tempdir();
        let mut s = spec(&server.url("/go"), dir.path());
        s.headers = vec![("Cookie".into(), "session=s3cr3t".into())];

        let path = get(s).await.expect("download succeeds");

        assert_exact(&path, &file);
        let requests = server.requests();
        assert!(
            requests
                .iter()
                .any(|r| r.header("host").is_some_and(|h| h.starts_with("localhost"))),
            "the redirect was not followed to the other host"
        );
        for r in requests {
            let other_host = r.header("host").is_some_and(|h| h.starts_with("localhost"));
            if other_host {
                assert_eq!(
                    r.header("cookie"),
                    None,
                    "a cookie went to another host: {r:?}"
                );
            } else {
                assert_eq!(r.header("cookie"), Some("session=s3cr3t"), "{r:?}");
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_file_over_16_connections_is_exact() {
    bounded(90, async {
        let server = TestServer::start().await;
        let file = server.serve("/huge.bin", FileSpec::new(64 * MIB).seed(13));

        fetch_exact(&file, |s| s.threads = 16, "download succeeds").await;

        // A split leaves the victim's request asking for more than it will read: what the server pushed into the
        // socket buffers past the new end is wasted, a few MiB on loopback. Fetching the file twice is another matter.
        // The probe's answer (the whole file, unranged) is dropped in the same way, as soon as it has told the size;
        // its waste is bounded by the socket buffers, not by splits, so only the ranged answers are counted.
        let served: u64 = (file.gets().iter())
            .filter(|r| r.range().is_some())
            .map(|r| r.body_bytes)
            .sum();
        assert!(
            served < file.len() + file.len() / 4,
            "the server sent {served} bytes for a {} byte file",
            file.len()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_path_in_a_missing_folder_is_created() {
    serve_and_fetch_to_exactly(
        "/deep.bin",
        FileSpec::new(MIB).seed(14),
        &["a", "b", "deep-copy.bin"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_climb_towards_the_total() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/watched.bin",
            FileSpec::new(4 * MIB).seed(15).rate(2 * MIB),
        );
        let dir = tempdir();
        let mut s = spec(file.url(), dir.path());
        s.threads = 2;
        let mut seen = Vec::new();

        let path = sdm::engine::oneshot::get(s, |snap| seen.push(snap.clone()))
            .await
            .expect("download succeeds");

        assert_exact(&path, &file);
        assert!(
            seen.len() >= 2,
            "{} progress reports in a one-second download",
            seen.len()
        );
        assert!(
            seen.windows(2).all(|w| w[0].downloaded <= w[1].downloaded),
            "progress went backwards"
        );
        for snap in &seen {
            assert!(snap.downloaded <= file.len(), "{snap:?}");
            assert!(snap.connections <= 2, "{snap:?}");
        }
        let last = seen.last().unwrap();
        assert_eq!(last.total, Some(file.len()));
        assert_eq!(last.filename, "watched.bin");
    })
    .await;
}

/// Over https the own path costs a TLS handshake of its own, where reqwest's requests reuse the probe's connection: a
/// small file is the probe's own answer, one request; from `OWN_TLS_MIN` on, the own path opens its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_a_small_file_reuses_the_probes_connection_and_a_large_one_takes_the_own_path() {
    sdm::engine::probe::trust_extra_roots(vec![test_ca_der()]);
    bounded(60, async {
        let server = TestServer::start().await;
        let front = TlsFront::start(&server, Cert::Good).await;
        let min = sdm::engine::transfer::OWN_TLS_MIN;
        for (name, len, own) in [("small", min - 1, false), ("large", min, true)] {
            let file = server
                .serve(&format!("/{name}.bin"), FileSpec::new(len))
                .via(&front);
            fetch_exact(
                &file,
                |s| {
                    s.threads = 1;
                    s.own_tls_min = min;
                },
                "download succeeds",
            )
            .await;
            let requests = file.requests();
            let probe = requests.first().expect("a probe").conn;
            let get = file.gets().last().expect("a GET").conn;
            assert_eq!(
                get != probe,
                own,
                "{name} file ({len} bytes): {}",
                if own {
                    "its body should come over a connection of the own path"
                } else {
                    "its body should come over the probe's connection, through reqwest"
                }
            );
            if !own {
                assert_eq!(requests.len(), 1, "the probe's answer is the whole file");
            }
        }
    })
    .await;
}
