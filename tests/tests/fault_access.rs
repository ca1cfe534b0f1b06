//! Who may talk to SDM, and what it lets out: the host manifests name only our extension (whose id really is the
//! one its manifest key gives), the data folder is 0700 and every file in it 0600, a socket or data folder owned by
//! another user is refused, and cookies and Authorization headers never reach a log, history, or another host.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use protocol::{AddRequest, Status};
use sdm::install::{Browser, ManifestFormat, manifest};
use sdm_tests::harness::Sandbox;
use sdm_tests::{FileSpec, TestServer};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::fault_support::{Connect, add, give_away, wait_info};
use crate::support::{assert_exact, bounded};

const MIB: u64 = 1024 * 1024;
const COOKIE: &str = "session=C00KIE-53CR3T";
const TOKEN: &str = "Bearer T0K3N-53CR3T";

/// Standard base64, enough for a manifest key.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    digits
        .chunks(4)
        .flat_map(|c| {
            let n = c
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &d)| n | u32::from(d) << (18 - 6 * i));
            n.to_be_bytes()[1..c.len()].to_vec()
        })
        .collect()
}

#[test]
fn host_manifests_allow_only_our_extension_whose_id_its_key_gives() {
    let ext: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../extension/manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    // Chromium's id: the first 32 hex digits of sha256(public key), written with the letters a to p.
    let key = base64_decode(
        ext["key"]
            .as_str()
            .expect("the extension pins its id with a key"),
    );
    let id: String = Sha256::digest(&key)[..16]
        .iter()
        .flat_map(|b| [b >> 4, b & 15])
        .map(|n| char::from(b'a' + n))
        .collect();
    assert_eq!(
        id,
        protocol::EXTENSION_ID,
        "the key in extension/manifest.json gives another id"
    );
    assert_eq!(
        ext["browser_specific_settings"]["gecko"]["id"],
        protocol::GECKO_ID
    );

    for browser in Browser::ALL {
        let m = manifest(Path::new("/opt/sdm/sdm"), browser.format());
        let object = m.as_object().unwrap();
        match browser.format() {
            ManifestFormat::Chromium => {
                assert_eq!(
                    m["allowed_origins"],
                    json!([format!("chrome-extension://{id}/")]),
                    "{browser:?}"
                );
                assert!(!object.contains_key("allowed_extensions"));
            }
            ManifestFormat::Firefox => {
                assert_eq!(
                    m["allowed_extensions"],
                    json!([protocol::GECKO_ID]),
                    "{browser:?}"
                );
                assert!(!object.contains_key("allowed_origins"));
            }
        }
        // No wildcard anywhere, and nothing but the documented keys.
        assert!(!m.to_string().contains('*'), "{m}");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys.len(), 5, "{keys:?}");
    }
}

/// Every file in the data folder `data` is private, and only the queue (which must resume authorized) holds the
/// secrets.
fn assert_private_and_free_of_secrets(data: &Path) {
    assert_eq!(
        std::fs::metadata(data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(data).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{name} is not 0600"
        );
        assert_eq!(meta.uid(), sdm::paths::effective_uid(), "{name}");
        if meta.is_file() && name != "state.json" {
            let text = String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned();
            for secret in ["C00KIE-53CR3T", "T0K3N-53CR3T"] {
                assert!(!text.contains(secret), "{name} contains {secret}:\n{text}");
            }
        }
        seen.push(name);
    }
    seen.sort();
    eprintln!("data folder: {seen:?}");
    for must in [
        "history.jsonl",
        "relay.log",
        "service.log",
        "sdm.sock",
        "state.json",
    ] {
        assert!(seen.iter().any(|n| n == must), "no {must} in {seen:?}");
    }
}

/// Download with a cookie and an Authorization header through a relay, with every log at its most verbose, then look
/// for them everywhere they must not be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_is_private_and_no_secret_reaches_a_log_or_history() {
    bounded(90, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/private.bin",
            FileSpec::new(2 * MIB)
                .seed(220)
                .require_cookie(COOKIE)
                .require_header("authorization", TOKEN),
        );
        let refused = server.serve(
            "/refused.bin",
            FileSpec::new(MIB).seed(221).status_always(403),
        );
        let mut sdm = Sandbox::new();
        sdm.env("SDM_LOG", "trace");
        tokio::task::block_in_place(|| {
            // The relay starts the service (so both write their logs as in real use).
            let mut relay = sdm.relay();
            let headers = json!({"Cookie": COOKIE, "Authorization": TOKEN});
            for (id, url) in [(1, file.url()), (2, refused.url())] {
                let reply =
                    relay.call(json!({"id": id, "cmd": "add", "url": url, "headers": headers}));
                assert_eq!(reply["ok"], true, "{reply}");
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let list = relay.call(json!({"id": 3, "cmd": "list"}));
                let downloads = list["result"]["downloads"].as_array().unwrap().clone();
                let done = downloads
                    .iter()
                    .all(|d| d["status"] == "completed" || d["status"] == "failed");
                if done && !downloads.is_empty() {
                    assert_eq!(downloads[0]["status"], "completed", "{list}");
                    assert_eq!(downloads[1]["status"], "failed", "{list}");
                    let listed = list.to_string();
                    assert!(
                        !listed.contains("C00KIE") && !listed.contains("T0K3N"),
                        "{listed}"
                    );
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "downloads never finished: {list}"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let history = relay.call(json!({"id": 4, "cmd": "history"}));
            assert!(!history.to_string().contains("C00KIE"), "{history}");
        });
        assert_exact(&sdm.downloads().join("private.bin"), &file);
        assert!(
            file.gets()
                .iter()
                .all(|r| r.header("cookie") == Some(COOKIE))
        );

        assert_private_and_free_of_secrets(&sdm.data());
        assert!(
            sdm.service_log().contains("TRACE") || sdm.service_log().contains("DEBUG"),
            "logs were not verbose"
        );
    })
    .await;
}

/// Forwarded cookies go to the download's own host only, through the queue too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_do_not_follow_a_redirect_to_another_host() {
    bounded(60, async {
        let server = TestServer::start().await;
        let port = server.addr().port();
        let file = server.serve("/elsewhere.bin", FileSpec::new(2 * MIB).seed(222));
        server.redirect("/go", &format!("http://localhost:{port}/elsewhere.bin"));
        let mut sdm = Sandbox::new();
        let mut client = sdm.start_and_connect().await;
        let id = add(
            &mut client,
            AddRequest {
                url: server.url("/go"),
                headers: [
                    ("Cookie".to_string(), COOKIE.to_string()),
                    ("Authorization".to_string(), TOKEN.to_string()),
                ]
                .into(),
                ..AddRequest::default()
            },
        )
        .await;
        let done = wait_info(&mut client, id, 30, "finished", |d| d.status.is_finished()).await;
        assert_eq!(done.status, Status::Completed, "{done:?}");
        assert_exact(Path::new(&done.path), &file);
        let requests = server.requests();
        assert!(
            requests
                .iter()
                .any(|r| r.header("host").is_some_and(|h| h.starts_with("localhost")))
        );
        for r in requests {
            if r.header("host").is_some_and(|h| h.starts_with("localhost")) {
                assert_eq!(
                    r.header("cookie"),
                    None,
                    "a cookie went to another host: {r:?}"
                );
                assert_eq!(
                    r.header("authorization"),
                    None,
                    "a token went to another host: {r:?}"
                );
            } else {
                assert_eq!(r.header("cookie"), Some(COOKIE), "{r:?}");
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_or_data_folder_owned_by_another_user_is_refused() {
    bounded(60, async {
        let mut sdm = Sandbox::new();
        tokio::task::block_in_place(|| sdm.start());
        // Another user's socket where ours should be (as if planted in a shared SDM_HOME).
        if !give_away(&sdm.socket()) {
            return;
        }
        tokio::task::block_in_place(|| {
            let mut relay = sdm.relay();
            let reply = relay.call(json!({"id": 5, "cmd": "ping"}));
            assert_eq!(reply["ok"], false, "{reply}");
            assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
            let message = reply["error"]["message"].as_str().unwrap_or("");
            assert!(message.contains("belongs to uid 65534"), "{message}");
            assert!(message.contains("sdm.sock"), "{message}");

            let out = sdm.run(&["ls"]);
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("belongs to uid 65534") && err.contains("SDM_HOME"),
                "{err}"
            );

            // The same for the data folder itself, with our own socket inside.
            std::os::unix::fs::lchown(sdm.socket(), Some(sdm::paths::effective_uid()), None)
                .unwrap();
            assert!(
                sdm.run(&["ls"]).status.success(),
                "our own socket works again"
            );
            assert!(give_away(&sdm.data()));
            let out = sdm.run(&["ls"]);
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("belongs to uid 65534")
                    && err.contains(&*sdm.data().to_string_lossy()),
                "{err}"
            );
        });
    })
    .await;
}
