//! Misbehaving servers through the download queue, beyond `get_faults`: faults that never stop, a 416 on resume, a
//! redirect loop, a file replaced between pause and resume, a server that stalls every connection. Each ends with
//! the exact file or a failed download that says why, and never a wrong file at the final path.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protocol::{AddRequest, DownloadId, DownloadInfo, SettingsPatch, Status};
use sdm::engine::Engine;
use sdm_tests::{ALWAYS, FileSpec, TestServer, sha256_file, sha256_hex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{finished_files_in, wait_for, with_engine};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

async fn add(engine: &Engine, url: &str, threads: u32, retries: u32) -> DownloadId {
    engine
        .add(AddRequest {
            url: url.to_string(),
            threads: Some(threads),
            retries: Some(retries),
            ..AddRequest::default()
        })
        .await
        .expect("add is accepted")
        .id
}

async fn finished(engine: &Engine, id: DownloadId) -> DownloadInfo {
    wait_for(engine, id, "finished", |d| d.status.is_finished()).await
}

/// Wait until download `id` has 1 MiB, then pause it and wait until it is paused.
async fn pause_after_a_mib(engine: &Engine, id: DownloadId) {
    wait_for(engine, id, "1 MiB down", |d| d.downloaded >= MIB).await;
    engine.pause(id).expect("pause");
    wait_for(engine, id, "paused", |d| d.status == Status::Paused).await;
}

/// Failed, with an error `reason` accepts, and no finished file in the download folder under `root`.
fn assert_failed_leaving_nothing(info: &DownloadInfo, root: &Path, reason: impl Fn(&str) -> bool) {
    assert_eq!(info.status, Status::Failed, "{info:?}");
    assert!(info.error.as_deref().is_some_and(reason), "{info:?}");
    assert!(finished_files_in(&root.join("downloads")).is_empty());
}

/// Completed with exactly `sha256`, or failed with a reason (containing one of `reasons`, when given) and nothing but
/// `.part` files in `dir`. Returns whether it completed.
fn exact_or_explained(info: &DownloadInfo, dir: &Path, sha256: &str, reasons: &[&str]) -> bool {
    match info.status {
        Status::Completed => {
            assert_eq!(
                sha256_file(&info.path),
                sha256,
                "completed but not exact: {info:?}"
            );
            true
        }
        Status::Failed => {
            let error = info.error.as_deref().unwrap_or("");
            assert!(!error.is_empty(), "failed without a reason: {info:?}");
            assert!(
                reasons.is_empty() || reasons.iter().any(|r| error.to_lowercase().contains(r)),
                "the reason {error:?} names none of {reasons:?}"
            );
            assert_eq!(
                finished_files_in(dir),
                Vec::<String>::new(),
                "failed with {error:?} but left a file at a final name"
            );
            false
        }
        other => panic!("download ended as {other:?}: {info:?}"),
    }
}

/// Faults that every ranged response carries, not just the first few: the download cannot be rescued by retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_every_response_end_exact_or_explained() {
    with_engine(120, async |root, engine| {
        let server = TestServer::start().await;
        let cases: Vec<(&str, FileSpec, &[&str])> = vec![
            (
                "wrong content-range",
                FileSpec::new(2 * MIB).wrong_content_range(ALWAYS),
                &["range"],
            ),
            (
                "more bytes than asked",
                FileSpec::new(2 * MIB).extra_bytes(10_000, ALWAYS),
                &[],
            ),
            (
                "html page on a range",
                FileSpec::new(2 * MIB).html_on_range(ALWAYS),
                &[],
            ),
            (
                "content-length too big",
                FileSpec::new(2 * MIB).length_lie(5000, ALWAYS),
                &[],
            ),
            (
                "content-length too small",
                FileSpec::new(2 * MIB).length_lie(-5000, ALWAYS),
                &[],
            ),
            (
                "fewer bytes then eof",
                FileSpec::new(2 * MIB).short_body(1, ALWAYS),
                &[],
            ),
        ];
        let mut outcomes = Vec::new();
        for (i, (name, spec, reasons)) in cases.into_iter().enumerate() {
            let file = server.serve(&format!("/always{i}.bin"), spec.seed(100 + i as u64));
            let dir = root.path().join("downloads");
            let id = add(engine, file.url(), 4, 3).await;
            let info = finished(engine, id).await;
            let completed = exact_or_explained(&info, &dir, &file.sha256(), reasons);
            outcomes.push(format!(
                "{name}: {}",
                if completed {
                    "exact"
                } else {
                    info.error.as_deref().unwrap_or("")
                }
            ));
            // Keep the folder clean for the next case's "no file left" check.
            if completed {
                std::fs::remove_file(&info.path).expect("remove the finished file");
            }
        }
        eprintln!("faults on every response:\n  {}", outcomes.join("\n  "));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_loop_fails_with_a_reason() {
    with_engine(30, async |root, engine| {
        let server = TestServer::start().await;
        server.redirect("/a", "/b");
        server.redirect("/b", "/a");
        let id = add(engine, &server.url("/a"), 4, 2).await;
        let info = finished(engine, id).await;
        assert_failed_leaving_nothing(&info, root.path(), |e| {
            e.to_lowercase().contains("redirect")
        });
    })
    .await;
}

/// The file is replaced on the server while the download is paused: the resumed download never splices the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_between_pause_and_resume_is_not_spliced() {
    with_engine(60, async |root, engine| {
        let server = TestServer::start().await;
        for (i, spec) in [
            FileSpec::new(6 * MIB).etag(),
            FileSpec::new(6 * MIB).last_modified(),
        ]
        .into_iter()
        .enumerate()
        {
            let file = server.serve(
                &format!("/changing{i}.bin"),
                spec.seed(130 + i as u64).rate(MIB),
            );
            let id = add(engine, file.url(), 4, 3).await;
            pause_after_a_mib(engine, id).await;
            file.change_content();
            let gets_before = file.gets().len();
            engine.resume(id).expect("resume");
            let info = finished(engine, id).await;
            let dir = root.path().join("downloads");
            exact_or_explained(&info, &dir, &file.sha256(), &[]);
            // Every ranged request after the change carried the old validator, so the server could refuse to mix.
            let after = &file.gets()[gets_before..];
            assert!(
                after
                    .iter()
                    .filter(|r| r.range().is_some())
                    .all(|r| r.header("if-range").is_some()),
                "a ranged request after resume had no If-Range"
            );
            if info.status == Status::Completed {
                std::fs::remove_file(&info.path).unwrap();
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stalls_every_connection_fails_in_bounded_time() {
    with_engine(60, async |root, engine| {
        engine
            .set_settings(SettingsPatch {
                stall_timeout_secs: Some(1),
                ..SettingsPatch::default()
            })
            .await
            .expect("settings");
        let server = TestServer::start().await;
        let file = server.serve(
            "/stall.bin",
            FileSpec::new(4 * MIB).seed(140).stall_after(0, ALWAYS),
        );
        let started = Instant::now();
        let id = add(engine, file.url(), 4, 2).await;
        let info = wait_for_long(engine, id, 45).await;
        assert_failed_leaving_nothing(&info, root.path(), |e| !e.is_empty());
        eprintln!(
            "every connection stalls: failed after {:.1?}: {:?}",
            started.elapsed(),
            info.error
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_429_storm_gives_up_with_a_reason() {
    with_engine(60, async |root, engine| {
        let server = TestServer::start().await;
        // The probe goes through; every later request is refused, with a short Retry-After.
        let file = server.serve(
            "/storm.bin",
            FileSpec::new(4 * MIB)
                .seed(150)
                .status_after(1, ALWAYS, 429)
                .retry_after("1"),
        );
        let id = add(engine, file.url(), 4, 2).await;
        let info = wait_for_long(engine, id, 45).await;
        assert_failed_leaving_nothing(&info, root.path(), |e| e.contains("429"));
        // Bounded by the retries, not hammering: a few requests per connection, not hundreds.
        assert!(
            file.gets().len() < 60,
            "{} requests in a 429 storm",
            file.gets().len()
        );
    })
    .await;
}

/// Like [`wait_for`] until finished, with a longer limit for faults that take their retries' time.
async fn wait_for_long(engine: &Engine, id: DownloadId, secs: u64) -> DownloadInfo {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let info = engine.get(id).expect("download exists");
        if info.status.is_finished() {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "not finished after {secs} s: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server that honours ranges (paced at 1 MiB/s a connection) until told to refuse, then answers every ranged
/// request `416 Range Not Satisfiable` and a plain `GET` with the whole file: a server whose file vanished or shrank
/// behind a load balancer.
struct Refuses416 {
    url: String,
    refuse: Arc<AtomicBool>,
    ranged_416: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Refuses416 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Refuses416 {
    async fn start(body: Vec<u8>) -> Refuses416 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/file.bin", listener.local_addr().unwrap());
        let refuse = Arc::new(AtomicBool::new(false));
        let ranged_416 = Arc::new(AtomicU64::new(0));
        let body = Arc::new(body);
        let (r, n) = (refuse.clone(), ranged_416.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns.spawn(serve_416(stream, body.clone(), r.clone(), n.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        Refuses416 {
            url,
            refuse,
            ranged_416,
            task,
        }
    }
}

async fn serve_416(
    mut stream: tokio::net::TcpStream,
    body: Arc<Vec<u8>>,
    refuse: Arc<AtomicBool>,
    n: Arc<AtomicU64>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 || head.len() > 16 * 1024 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let total = body.len() as u64;
    let range = head
        .lines()
        .find_map(|l| l.strip_prefix("range: bytes="))
        .and_then(|r| {
            let (a, b) = r.trim().split_once('-')?;
            let a: u64 = a.parse().ok()?;
            let b: u64 = if b.is_empty() {
                total - 1
            } else {
                b.parse().ok()?
            };
            Some((a, b.min(total - 1)))
        });
    let etag = "\"v1\"";
    let (status, start, end) = match range {
        Some(_) if refuse.load(Ordering::SeqCst) => {
            n.fetch_add(1, Ordering::SeqCst);
            let resp = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            return;
        }
        Some((a, b)) => ("206 Partial Content", a, b + 1),
        None => ("200 OK", 0, total),
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nAccept-Ranges: bytes\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n",
        end - start
    );
    if range.is_some() {
        resp.push_str(&format!(
            "Content-Range: bytes {start}-{}/{total}\r\n",
            end - 1
        ));
    }
    resp.push_str("\r\n");
    if stream.write_all(resp.as_bytes()).await.is_err() || head.starts_with("head ") {
        return;
    }
    let began = Instant::now();
    let mut pos = start;
    while pos < end {
        let stop = (pos + 32 * KIB).min(end);
        if stream
            .write_all(&body[pos as usize..stop as usize])
            .await
            .is_err()
        {
            return;
        }
        pos = stop;
        let due = Duration::from_secs_f64((pos - start) as f64 / MIB as f64);
        tokio::time::sleep(due.saturating_sub(began.elapsed())).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_416_on_resume_ends_exact_or_explained() {
    with_engine(60, async |root, engine| {
        let body = sdm_tests::server::expected_bytes(160, 0, 4 * MIB);
        let sha = sha256_hex(&body);
        let server = Refuses416::start(body).await;
        let id = add(engine, &server.url, 4, 2).await;
        pause_after_a_mib(engine, id).await;
        server.refuse.store(true, Ordering::SeqCst);
        engine.resume(id).expect("resume");
        let info = wait_for_long(engine, id, 45).await;
        let dir = root.path().join("downloads");
        exact_or_explained(&info, &dir, &sha, &["416"]);
        assert!(
            server.ranged_416.load(Ordering::SeqCst) > 0,
            "the resume never asked for a range"
        );
        eprintln!("416 on resume: {:?} {:?}", info.status, info.error);
    })
    .await;
}
