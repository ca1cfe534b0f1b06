//! The test server against raw TCP: what each fault puts on the wire.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::*;

/// A parsed response: status, lowercased headers, body as read until the framing (or EOF) ended it.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        super::header(&self.headers, name)
    }
}

/// Send one request on `stream` and read its response, following `Content-Length`, chunked framing or EOF.
async fn exchange(
    stream: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    extra: &[&str],
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for line in extra {
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    stream.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await.unwrap();
        let t = line.trim_end();
        if t.is_empty() {
            break;
        }
        let (n, v) = t.split_once(':').unwrap();
        headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if method == "HEAD" {
        return resp;
    }
    if let Some(n) = resp.header("content-length") {
        let n: usize = n.parse().unwrap();
        let mut body = vec![0; n];
        let mut got = 0;
        while got < n {
            match stream.read(&mut body[got..]).await.unwrap() {
                0 => break,
                k => got += k,
            }
        }
        body.truncate(got);
        resp.body = body;
    } else if resp.header("transfer-encoding") == Some("chunked") {
        loop {
            line.clear();
            stream.read_line(&mut line).await.unwrap();
            let n = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            stream.read_exact(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            resp.body.extend_from_slice(&chunk[..n]);
        }
    } else {
        stream.read_to_end(&mut resp.body).await.unwrap();
    }
    resp
}

async fn connect(server: &TestServer) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(server.addr()).await.unwrap())
}

async fn get(server: &TestServer, path: &str, extra: &[&str]) -> Resp {
    exchange(&mut connect(server).await, "GET", path, extra).await
}

#[test]
fn content_is_deterministic_and_seekable() {
    let whole = expected_bytes(9, 0, 1000);
    assert_eq!(whole, expected_bytes(9, 0, 1000));
    assert_ne!(whole, expected_bytes(10, 0, 1000));
    assert_ne!(whole, expected_bytes(9, 1, 1000));
    for offset in [0, 1, 7, 8, 13, 500] {
        let mut part = vec![0; 77];
        fill(9, 0, offset, &mut part);
        assert_eq!(part[..], whole[offset as usize..offset as usize + 77]);
    }
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[tokio::test]
async fn serves_whole_file_and_ranges_with_correct_headers() {
    let server = TestServer::start().await;
    let file = server.serve("/f.bin", FileSpec::new(100_000).seed(1));
    let whole = get(&server, "/f.bin", &[]).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert_eq!(whole.body, file.bytes());

    let part = get(&server, "/f.bin", &["Range: bytes=10-19"]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 10-19/100000"));
    assert_eq!(part.body, file.bytes()[10..20]);

    let open = get(&server, "/f.bin", &["Range: bytes=99990-"]).await;
    assert_eq!(
        open.header("content-range"),
        Some("bytes 99990-99999/100000")
    );
    assert_eq!(open.body.len(), 10);

    let suffix = get(&server, "/f.bin", &["Range: bytes=-5"]).await;
    assert_eq!(suffix.body, file.bytes()[99_995..]);

    let past = get(&server, "/f.bin", &["Range: bytes=100000-"]).await;
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some("bytes */100000"));

    let log = file.requests();
    assert_eq!(log.len(), 5);
    assert_eq!(log[1].range(), Some((10, Some(19))));
    assert_eq!(log[2].range_start(), Some(99_990));
    assert_eq!(log[0].status, 200);
    assert_eq!(log[0].body_bytes, 100_000);
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let server = TestServer::start().await;
    let file = server.serve("/k", FileSpec::new(5000));
    let mut conn = connect(&server).await;
    let a = exchange(&mut conn, "HEAD", "/k", &[]).await;
    assert_eq!(a.header("content-length"), Some("5000"));
    let b = exchange(&mut conn, "GET", "/k", &["Range: bytes=0-99"]).await;
    let c = exchange(&mut conn, "GET", "/k", &[]).await;
    assert_eq!(b.body, file.bytes()[..100]);
    assert_eq!(c.body, file.bytes());
    let conns: Vec<u64> = file.requests().iter().map(|r| r.conn).collect();
    assert_eq!(conns, vec![conns[0]; 3]);
}

#[tokio::test]
async fn no_ranges_no_head_and_no_length() {
    let server = TestServer::start().await;
    let plain = server.serve("/p", FileSpec::new(3000).no_ranges().no_head());
    let r = get(&server, "/p", &["Range: bytes=10-19"]).await;
    assert_eq!((r.status, r.body.len()), (200, 3000));
    assert_eq!(r.header("accept-ranges"), None);
    server.serve("/liar", FileSpec::new(3000).ignore_ranges());
    let r = get(&server, "/liar", &["Range: bytes=10-19"]).await;
    assert_eq!((r.status, r.body.len()), (200, 3000));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let mut conn = connect(&server).await;
    assert_eq!(exchange(&mut conn, "HEAD", "/p", &[]).await.status, 405);

    let chunked = server.serve("/c", FileSpec::new(200_000).no_length(NoLength::Chunked));
    let r = get(&server, "/c", &[]).await;
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.body, chunked.bytes());

    let eof = server.serve(
        "/e",
        FileSpec::new(200_000).no_length(NoLength::CloseDelimited),
    );
    let r = get(&server, "/e", &[]).await;
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.body, eof.bytes());
    assert_eq!(plain.requests().len(), 2);
}

#[tokio::test]
async fn status_faults_count_requests() {
    let server = TestServer::start().await;
    let busy = server.serve(
        "/b",
        FileSpec::new(10).status_first(2, 503).retry_after("1"),
    );
    let r = get(&server, "/b", &[]).await;
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
    assert_eq!(get(&server, "/b", &[]).await.status, 503);
    let r = get(&server, "/b", &[]).await;
    assert_eq!((r.status, r.body), (200, busy.bytes()));

    server.serve("/gone", FileSpec::new(10).status_always(410));
    assert_eq!(get(&server, "/gone", &[]).await.status, 410);
    // An error answer to HEAD has no body, so the next request on the connection reads a clean response.
    let mut conn = connect(&server).await;
    assert_eq!(exchange(&mut conn, "HEAD", "/gone", &[]).await.status, 410);
    let after = exchange(&mut conn, "GET", "/gone", &[]).await;
    assert_eq!((after.status, after.body), (410, b"go away\n".to_vec()));

    server.serve("/later", FileSpec::new(10).status_after(1, 1, 503));
    let codes = [
        get(&server, "/later", &[]).await.status,
        get(&server, "/later", &[]).await.status,
        get(&server, "/later", &[]).await.status,
    ];
    assert_eq!(codes, [200, 503, 200]);
    assert_eq!(get(&server, "/nothing-here", &[]).await.status, 404);

    server.serve("/private", FileSpec::new(10).require_cookie("session=abc"));
    assert_eq!(get(&server, "/private", &[]).await.status, 403);
    let ok = get(&server, "/private", &["Cookie: a=1; session=abc"]).await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn cut_and_short_bodies_end_early_then_recover() {
    let server = TestServer::start().await;
    let file = server.serve("/cut", FileSpec::new(100_000).cut_after(1000, 1));
    let r = get(&server, "/cut", &[]).await;
    assert_eq!(r.header("content-length"), Some("100000"));
    assert_eq!(r.body, file.bytes()[..1000]);
    assert_eq!(get(&server, "/cut", &[]).await.body, file.bytes());

    let short = server.serve("/short", FileSpec::new(5000).short_body(100, ALWAYS));
    let r = get(&server, "/short", &["Range: bytes=1000-1999"]).await;
    assert_eq!(r.header("content-length"), Some("1000"));
    assert_eq!(r.body, short.bytes()[1000..1900]);
}

#[tokio::test]
async fn stall_sends_some_bytes_then_nothing() {
    let server = TestServer::start().await;
    let file = server.serve("/s", FileSpec::new(100_000).stall_after(500, 1));
    let mut conn = connect(&server).await;
    conn.get_mut()
        .write_all(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_millis(700), async {
        let mut buf = [0; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_err(), "the stalled response must not end");
    assert!(got.ends_with(&file.bytes()[..500]));
    assert_eq!(file.active(), 1);
    drop(conn);
    assert_eq!(get(&server, "/s", &[]).await.body, file.bytes());
}

#[tokio::test]
async fn hang_sends_nothing_then_serves_again() {
    let server = TestServer::start().await;
    let file = server.serve("/h", FileSpec::new(100).hang_after(0, 1));
    let mut conn = connect(&server).await;
    conn.get_mut()
        .write_all(b"GET /h HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0; 16];
    let read = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await;
    assert!(read.is_err(), "a hung request was answered");
    drop(conn);
    assert_eq!(get(&server, "/h", &[]).await.body, file.bytes());
}

#[tokio::test]
async fn validators_change_with_content_and_gate_if_range() {
    let server = TestServer::start().await;
    let file = server.serve("/v", FileSpec::new(4096).etag().last_modified());
    let first = get(&server, "/v", &[]).await;
    let etag = first.header("etag").unwrap().to_string();
    assert_eq!(etag, file.etag());
    let with = format!("If-Range: {etag}");
    let r = get(&server, "/v", &["Range: bytes=0-9", &with]).await;
    assert_eq!(r.status, 206);

    file.change_content();
    assert_eq!(file.version(), 1);
    let r = get(&server, "/v", &["Range: bytes=0-9", &with]).await;
    assert_eq!(r.status, 200, "a stale If-Range gets the whole new file");
    assert_eq!(r.body, file.bytes_of_version(1));
    assert_ne!(r.header("etag").unwrap(), etag);
    assert_ne!(r.header("last-modified"), first.header("last-modified"));
    let stale = format!("If-Match: {etag}");
    assert_eq!(get(&server, "/v", &[&stale]).await.status, 412);

    let auto = server.serve("/auto", FileSpec::new(64).etag().content_changes_after(1));
    let a = get(&server, "/auto", &[]).await;
    let b = get(&server, "/auto", &[]).await;
    assert_eq!(a.body, auto.bytes_of_version(0));
    assert_eq!(b.body, auto.bytes_of_version(1));
}

#[tokio::test]
async fn lies_on_ranged_requests() {
    let server = TestServer::start().await;
    let f = server.serve("/wrong", FileSpec::new(50_000).wrong_content_range(1));
    let r = get(&server, "/wrong", &["Range: bytes=100-199"]).await;
    assert_eq!(r.header("content-range"), Some("bytes 4196-4295/50000"));
    assert_eq!(r.body, f.bytes()[100..200]);

    let f = server.serve("/capped", FileSpec::new(50_000).max_range(1000));
    let r = get(&server, "/capped", &["Range: bytes=100-"]).await;
    assert_eq!(r.header("content-range"), Some("bytes 100-1099/50000"));
    assert_eq!(r.body, f.bytes()[100..1100]);

    let f = server.serve("/extra", FileSpec::new(50_000).extra_bytes(50, 1));
    let r = get(&server, "/extra", &["Range: bytes=100-199"]).await;
    assert_eq!(r.header("content-range"), Some("bytes 100-249/50000"));
    assert_eq!(r.body, f.bytes()[100..250]);

    server.serve("/html", FileSpec::new(50_000).html_on_range(1));
    let r = get(&server, "/html", &["Range: bytes=100-199"]).await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("text/html"))
    );
    assert!(r.body.starts_with(b"<!DOCTYPE html>"));

    let f = server.serve("/lie", FileSpec::new(1000).length_lie(500, 1));
    let r = get(&server, "/lie", &[]).await;
    assert_eq!(r.header("content-length"), Some("1500"));
    assert_eq!(r.body, f.bytes());
}

#[tokio::test]
async fn hostile_headers_go_out_byte_for_byte() {
    let server = TestServer::start().await;
    let value = b"attachment; filename=\"a\x01b\x1bc.txt\"".to_vec();
    server.serve("/cd", FileSpec::new(10).content_disposition(value));
    let mut conn = connect(&server).await;
    conn.get_mut()
        .write_all(b"HEAD /cd HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_until(b'\n', &mut head).await.unwrap();
    }
    let needle = b"Content-Disposition: attachment; filename=\"a\x01b\x1bc.txt\"\r\n";
    assert!(head.windows(needle.len()).any(|w| w == needle));
}

#[tokio::test]
async fn rate_cap_paces_and_slow_range_only_slows_the_tail() {
    let server = TestServer::start().await;
    let file = server.serve("/r", FileSpec::new(400_000).slow_range(300_000, 200_000));
    let t = Instant::now();
    let fast = get(&server, "/r", &["Range: bytes=0-299999"]).await;
    let fast_time = t.elapsed();
    let t = Instant::now();
    let slow = get(&server, "/r", &["Range: bytes=300000-"]).await;
    let slow_time = t.elapsed();
    assert_eq!(fast.body, file.bytes()[..300_000]);
    assert_eq!(slow.body, file.bytes()[300_000..]);
    assert!(slow_time >= Duration::from_millis(400), "{slow_time:?}");
    assert!(fast_time < Duration::from_millis(400), "{fast_time:?}");
}

#[tokio::test]
async fn pause_before_last_holds_back_each_bodys_end() {
    let server = TestServer::start().await;
    let pause = Duration::from_millis(300);
    let file = server.serve(
        "/p",
        FileSpec::new(200_000).pause_before_last(50_000, pause),
    );
    for (range, from) in [(None, 0), (Some("Range: bytes=100000-199999"), 100_000)] {
        let t = Instant::now();
        let r = get(&server, "/p", range.as_slice()).await;
        assert!(t.elapsed() >= pause, "{range:?}: {:?}", t.elapsed());
        assert_eq!(r.body, file.bytes()[from..], "{range:?}");
    }
}

#[tokio::test]
async fn redirects_and_concurrency_are_recorded() {
    let server = TestServer::start().await;
    let file = server.serve("/target", FileSpec::new(300_000).rate(1_000_000));
    server.redirect("/from", "/target");
    let r = get(&server, "/from", &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some(server.url("/target").as_str()));

    let (a, b) = tokio::join!(
        get(&server, "/target", &["Range: bytes=0-149999"]),
        get(&server, "/target", &["Range: bytes=150000-"])
    );
    assert_eq!([a.body, b.body].concat(), file.bytes());
    assert_eq!(file.peak_active(), 2);
    assert_eq!(file.peak_data_connections(100_000), 2);
    assert_eq!(file.peak_data_connections(200_000), 0);
    assert_eq!(file.active(), 0);
    assert_eq!(server.peak_files_at_once(), 1);
    assert_eq!(server.requests()[0].path, "/from");
}

#[tokio::test]
async fn dropping_the_server_closes_its_connections() {
    let server = TestServer::start().await;
    server.serve("/s", FileSpec::new(100).stall_after(10, ALWAYS));
    let mut conn = connect(&server).await;
    conn.get_mut()
        .write_all(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    let addr = server.addr();
    drop(server);
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "connection still open after drop");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}
