//! Browser capture as the engine and the service see it: verified adds (`expect`), idempotent client keys, `find`,
//! and names that servers give on GET only.

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::{AddRequest, AddResult, ErrorCode, Expect, Status};
use sdm::engine::Engine;
use sdm_tests::harness::Sandbox;
use sdm_tests::{FileSpec, ServedFile, TestServer};
use serde_json::json;
use tokio_util::codec::Framed;

use crate::fault_support::Connect;
use crate::support::{
    bounded, complete_exact, fetch_exact, names_in, until, wait_status, with_engine,
};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// A verified add of `file`, as capture sends it: the browser saw `size` bytes of `mime`.
fn capture(file: &ServedFile, key: &str, size: u64, mime: &str) -> AddRequest {
    AddRequest {
        url: file.url().to_string(),
        client_key: Some(key.to_string()),
        expect: Some(Expect {
            size: Some(size),
            mime: Some(mime.to_string()),
        }),
        ..AddRequest::default()
    }
}

/// The downloads recorded in `state.json` under `root`.
fn saved_downloads(root: &Path) -> Vec<serde_json::Value> {
    let Ok(text) = std::fs::read(root.join("data/state.json")) else {
        return Vec::new();
    };
    let state: serde_json::Value = serde_json::from_slice(&text).expect("state.json is JSON");
    state["downloads"].as_array().cloned().unwrap_or_default()
}

/// The GETs of `file` that asked for its first byte only: verifications, and probes looking for a name.
fn first_byte_gets(file: &ServedFile) -> usize {
    file.gets()
        .iter()
        .filter(|r| r.range() == Some((0, Some(0))))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_add_is_saved_before_it_answers_and_completes_exact() {
    with_engine(60, async |root, engine| {
        let server = TestServer::start().await;
        let file = server.serve(
            "/verified.bin",
            FileSpec::new(3 * MIB)
                .seed(501)
                .etag()
                .require_cookie("s=1"),
        );
        let mut req = capture(&file, "cap-1", file.len(), "application/octet-stream");
        req.headers.insert("Cookie".into(), "s=1".into());
        req.referrer = Some(server.url("/page.html"));

        let added = engine.add_verified(req).await.expect("the add is verified");
        assert!(!added.existing);
        let saved = saved_downloads(root.path());
        assert_eq!(saved.len(), 1, "{saved:?}");
        assert_eq!(saved[0]["client_key"], "cap-1");
        assert_eq!(saved[0]["id"], added.id);

        let verification = file.gets().into_iter().next().expect("a verification GET");
        assert_eq!(verification.range(), Some((0, Some(0))));
        assert_eq!(verification.header("cookie"), Some("s=1"));
        assert_eq!(
            verification.header("referer"),
            Some(server.url("/page.html").as_str())
        );
        let info = complete_exact(engine, added.id, &file).await;
        assert_eq!(info.filename, "verified.bin");
        assert_eq!(
            first_byte_gets(&file),
            1,
            "the verification named the file: the probe needs no second look"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_add_of_a_file_sdm_cannot_get_fails_and_leaves_nothing() {
    with_engine(60, async |root, engine| {
        let server = TestServer::start().await;
        let gone = server.serve("/gone.bin", FileSpec::new(MIB).status_always(410));
        let other_size = server.serve("/other.bin", FileSpec::new(MIB).seed(502));
        let page = server.serve(
            "/page.bin",
            FileSpec::new(20 * KIB)
                .seed(503)
                .content_type("text/html; charset=utf-8"),
        );
        let cases = [
            (
                capture(&gone, "k-gone", MIB, "application/octet-stream"),
                "the server answered 410 Gone",
            ),
            (
                capture(&other_size, "k-size", MIB + 1, "application/octet-stream"),
                "the server offers 1048576 bytes, the browser got 1048577",
            ),
            (
                capture(&page, "k-page", 20 * KIB, "application/octet-stream"),
                "the server sent a web page, not the file",
            ),
        ];
        for (req, why) in cases {
            let key = req.client_key.clone().unwrap();
            let err = engine
                .add_verified(req)
                .await
                .expect_err("the add must fail");
            assert_eq!(err.code, ErrorCode::FetchFailed, "{err:?}");
            assert_eq!(err.message, why);
            assert_eq!(engine.find(&key).await, Ok(None));
        }
        assert_eq!(engine.list(Default::default()).total, 0);
        assert_eq!(
            names_in(&root.path().join("downloads")),
            Vec::<String>::new()
        );
        assert!(saved_downloads(root.path()).is_empty());
        // Only the verifications reached the servers.
        for file in [&gone, &other_size, &page] {
            assert_eq!(file.requests().len(), 1, "{:?}", file.requests());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_client_key_twice_is_one_download() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        let file = server.serve("/twice.bin", FileSpec::new(MIB).seed(504));
        let first = engine
            .add_verified(capture(&file, "twice", file.len(), "application/zip"))
            .await
            .expect("first add");
        assert!(!first.existing);
        let again = engine
            .add_verified(capture(&file, "twice", file.len(), "application/zip"))
            .await
            .expect("second add");
        assert_eq!(
            again,
            AddResult {
                id: first.id,
                existing: true
            }
        );
        // A plain add with that key names the same download too, even once it is finished.
        complete_exact(engine, first.id, &file).await;
        let plain = engine
            .add(AddRequest {
                url: server.url("/elsewhere.bin"),
                client_key: Some("twice".into()),
                ..AddRequest::default()
            })
            .await
            .expect("plain add");
        assert_eq!(plain.id, first.id);
        assert!(plain.existing);
        assert_eq!(engine.list(Default::default()).total, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_verified_adds_of_one_url_at_once_make_one_download() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        // Slow to answer, so the two verifications would overlap if they were not serialised.
        let file = server.serve(
            "/once.bin",
            FileSpec::new(MIB)
                .seed(505)
                .get_delay(Duration::from_millis(300)),
        );
        let (a, b) = tokio::join!(
            engine.add_verified(capture(&file, "tab-1", file.len(), "application/zip")),
            engine.add_verified(capture(&file, "tab-2", file.len(), "application/zip")),
        );
        let (a, b) = (a.expect("first capture"), b.expect("second capture"));
        assert_eq!(a.id, b.id, "{a:?} {b:?}");
        assert!(
            a.existing != b.existing,
            "exactly one was added: {a:?} {b:?}"
        );
        assert_eq!(engine.list(Default::default()).total, 1);
        // Either capture's reply may be lost: find answers for both keys.
        for key in ["tab-1", "tab-2"] {
            let found = engine.find(key).await.expect("find").expect("known key");
            assert_eq!(found.id, a.id, "{key}");
        }
        complete_exact(engine, a.id, &file).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_waits_for_a_verification_under_way_and_names_its_download() {
    with_engine(60, async |_root, engine| {
        let server = TestServer::start().await;
        let file = server.serve(
            "/found.bin",
            FileSpec::new(MIB)
                .seed(506)
                .get_delay(Duration::from_millis(500)),
        );
        assert_eq!(engine.find("found").await, Ok(None), "nothing added yet");
        assert_eq!(
            engine.find("").await.map_err(|e| e.code),
            Err(ErrorCode::InvalidArgument)
        );

        let adder: Engine = engine.clone();
        let req = capture(&file, "found", file.len(), "application/zip");
        let add = tokio::spawn(async move { adder.add_verified(req).await });
        until(10, "the verification GET", || !file.gets().is_empty()).await;
        // Asked while the server has not answered yet: the answer waits for the add, so it is final.
        let found = engine.find("found").await.expect("find").expect("found");
        let added = add.await.expect("add task").expect("add");
        assert_eq!(found.id, added.id);
        assert_eq!(found.url, file.url());

        let info = wait_status(engine, added.id, Status::Completed).await;
        let found = engine.find("found").await.expect("find").expect("found");
        assert_eq!(found.status, Status::Completed);
        assert_eq!(found.path, info.path);
        assert_eq!(engine.find("not-this-one").await, Ok(None));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_sent_on_get_only_names_verified_and_ordinary_adds() {
    with_engine(60, async |root, engine| {
        let server = TestServer::start().await;
        let named = |path: &str, seed| {
            server.serve(
                path,
                FileSpec::new(MIB)
                    .seed(seed)
                    .content_disposition_on_get("attachment; filename=\"report 2024.pdf\""),
            )
        };
        let captured = named("/fetch?id=1", 507);
        let ordinary = named("/fetch?id=2", 508);

        let added = engine
            .add_verified(capture(&captured, "named", MIB, "application/pdf"))
            .await
            .expect("verified add");
        let first = complete_exact(engine, added.id, &captured).await;
        assert_eq!(first.filename, "report 2024.pdf");

        let id = engine
            .add(AddRequest {
                url: ordinary.url().to_string(),
                ..AddRequest::default()
            })
            .await
            .expect("ordinary add")
            .id;
        let second = complete_exact(engine, id, &ordinary).await;
        assert_eq!(second.filename, "report 2024 (1).pdf");
        // The probe is one plain GET, named on GET, and its body is the whole file: one request.
        let requests = ordinary.requests();
        assert!(
            requests.len() == 1 && requests[0].method == "GET" && requests[0].range().is_none(),
            "{requests:?}"
        );
        assert_eq!(
            names_in(&root.path().join("downloads")),
            ["report 2024 (1).pdf", "report 2024.pdf"]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_name_costs_no_extra_request_for_one() {
    bounded(60, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/fixed.bin",
            FileSpec::new(MIB)
                .seed(509)
                .content_disposition_on_get("attachment; filename=other.bin"),
        );
        let (dir, path) = fetch_exact(
            &file,
            |s| s.output = s.output.join("chosen.bin"),
            "sdm get -o",
        )
        .await;
        assert_eq!(path, dir.path().join("chosen.bin"));
        assert_eq!(first_byte_gets(&file), 0, "{:?}", file.gets());

        // Into a folder, the name is the server's: the one it sends on GET.
        let (dir, path) = fetch_exact(&file, |_| {}, "sdm get into a folder").await;
        assert_eq!(path, dir.path().join("other.bin"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_other_requests_while_an_add_is_verified() {
    bounded(60, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/slow.bin",
            FileSpec::new(MIB)
                .seed(510)
                .get_delay(Duration::from_millis(1500)),
        );
        let mut sdm = Sandbox::new();
        drop(sdm.start_and_connect().await);
        let stream = tokio::net::UnixStream::connect(sdm.socket())
            .await
            .expect("connect");
        let mut conn = Framed::new(stream, protocol::codec::codec(protocol::MAX_INCOMING_FRAME));
        let frames = [
            json!({"id": 1, "cmd": "add", "url": file.url(), "client_key": "svc",
                   "expect": {"size": MIB, "mime": "application/octet-stream"}}),
            json!({"id": 2, "cmd": "ping"}),
            json!({"id": 3, "cmd": "find", "client_key": "svc"}),
        ];
        for frame in frames {
            conn.send(bytes::Bytes::from(frame.to_string()))
                .await
                .expect("send");
        }
        let mut replies = Vec::new();
        while replies.len() < 3 {
            let frame = conn.next().await.expect("a reply").expect("a frame");
            let reply: serde_json::Value = serde_json::from_slice(&frame).expect("JSON");
            replies.push(reply);
        }
        assert_eq!(
            replies[0]["id"], 2,
            "the ping waited for the add: {replies:?}"
        );
        let add = replies.iter().find(|r| r["id"] == 1).expect("add reply");
        let find = replies.iter().find(|r| r["id"] == 3).expect("find reply");
        assert_eq!(add["ok"], true, "{add}");
        assert!(add["result"].get("existing").is_none(), "{add}");
        assert_eq!(
            find["result"]["download"]["id"], add["result"]["id"],
            "{find}"
        );
        tokio::task::block_in_place(|| sdm.stop());
    })
    .await;
}
