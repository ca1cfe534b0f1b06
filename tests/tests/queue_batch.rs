//! `Engine::add_many`: a batch of adds judged item by item, in the queue at once and on disk when answered.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use protocol::{AddRequest, ErrorCode, Expect, MAX_ADD_MANY, PageRequest, SettingsPatch};
use sdm_tests::{FileSpec, TestServer};

use crate::support::{complete_exact, set_settings, with_engine};

const KIB: u64 = 1024;

/// The ids `state.json` holds now.
fn ids_on_disk(root: &std::path::Path) -> HashSet<u64> {
    let text = std::fs::read(root.join("data").join("state.json")).expect("state.json is written");
    let state: serde_json::Value = serde_json::from_slice(&text).unwrap();
    state["downloads"]
        .as_array()
        .expect("a list of downloads")
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_judged_item_by_item_and_on_disk_when_answered() {
    with_engine(30, async |root, engine| {
        let server = TestServer::start().await;
        let a = server.serve("/a.bin", FileSpec::new(64 * KIB).seed(181));
        let b = server.serve("/b.bin", FileSpec::new(96 * KIB).seed(182));
        let add = |url: &str| AddRequest {
            url: url.to_string(),
            threads: Some(2),
            ..AddRequest::default()
        };
        let keyed = AddRequest {
            client_key: Some("batch-key".into()),
            ..add(b.url())
        };
        let items = vec![
            add(a.url()),
            add("ftp://example.com/a"),
            AddRequest {
                expect: Some(Expect::default()),
                ..add(a.url())
            },
            keyed.clone(),
            keyed,
            add(&format!("{}?threads", a.url())),
        ];
        let results = engine.add_many(items).await.expect("the batch is taken");
        assert_eq!(results.len(), 6);
        let first = results[0].as_ref().expect("a good line is added");
        assert_eq!(
            results[1].as_ref().unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        let verified = results[2].as_ref().unwrap_err();
        assert_eq!(verified.code, ErrorCode::InvalidArgument);
        assert!(verified.message.contains("expect"), "{}", verified.message);
        let keyed = results[3].as_ref().unwrap();
        let again = results[4].as_ref().unwrap();
        assert!(!keyed.existing && again.existing && again.id == keyed.id);
        let last = results[5].as_ref().unwrap();
        assert_eq!(
            [first.id + 1, first.id + 2],
            [keyed.id, last.id],
            "ids follow the batch's order"
        );

        // Answered only once every new download is in `state.json`.
        let on_disk = ids_on_disk(root.path());
        for id in [first.id, keyed.id, last.id] {
            assert!(
                on_disk.contains(&id),
                "download {id} is not on disk: {on_disk:?}"
            );
        }
        assert_eq!(engine.list(PageRequest::default()).total, 3);
        complete_exact(engine, keyed.id, &b).await;
        complete_exact(engine, first.id, &a).await;
    })
    .await;
}

// Two workers, so the reader below runs beside the batch, not only when it awaits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_enters_the_queue_at_once() {
    with_engine(30, async |root, engine| {
        // Completed downloads stay listed, so the count changes only by the batch; one runs at a time.
        let server = TestServer::start().await;
        let file = server.serve("/never.bin", FileSpec::new(KIB).seed(183));
        set_settings(
            engine,
            SettingsPatch {
                max_concurrent: Some(1),
                ..SettingsPatch::default()
            },
        )
        .await;
        let items: Vec<AddRequest> = (0..MAX_ADD_MANY)
            .map(|i| AddRequest {
                url: format!("{}?n={i}", file.url()),
                ..AddRequest::default()
            })
            .collect();
        // A reader that lists the queue as fast as it can while the batch goes in sees none of it or all of it.
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let engine = engine.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut seen = HashSet::new();
                while !done.load(Ordering::SeqCst) {
                    seen.insert(engine.list(PageRequest::default()).total);
                    tokio::task::yield_now().await;
                }
                seen
            })
        };
        let results = engine.add_many(items).await.expect("the batch is taken");
        done.store(true, Ordering::SeqCst);
        assert!(results.iter().all(Result::is_ok));
        let seen = reader.await.unwrap();
        assert!(
            seen.iter().all(|&n| n == 0 || n == MAX_ADD_MANY),
            "a list saw part of the batch: {seen:?}"
        );
        assert_eq!(ids_on_disk(root.path()).len(), MAX_ADD_MANY);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_limit_is_refused_whole() {
    with_engine(30, async |_root, engine| {
        let items = vec![
            AddRequest {
                url: "http://127.0.0.1:1/x".into(),
                ..AddRequest::default()
            };
            MAX_ADD_MANY + 1
        ];
        let err = engine.add_many(items).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("at most"), "{}", err.message);
        assert_eq!(engine.list(PageRequest::default()).total, 0);
        let empty = engine.add_many(Vec::new()).await.unwrap();
        assert!(empty.is_empty());
    })
    .await;
}
