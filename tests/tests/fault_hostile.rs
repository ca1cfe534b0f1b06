//! Hostile requests through the real relay, as a compromised or buggy page could send them: other URL schemes,
//! credentials, absurd lengths; file names with traversal, absolute paths, NUL, device names, 10 KB; numbers out of
//! range; header injection. Each gets an error with a code and a reason, and nothing is queued or written.

use sdm_tests::harness::{Relay, Sandbox};
use serde_json::{Value, json};

use crate::fault_support::Connect;
use crate::support::bounded;

/// Send `request` (given an id here) and expect an error with `code` whose message mentions `mentions`.
fn refused(relay: &mut Relay, id: u64, mut request: Value, code: &str, mentions: &str) {
    request["id"] = json!(id);
    let reply = relay.call(request.clone());
    assert_eq!(reply["ok"], false, "accepted: {request}\n-> {reply}");
    assert_eq!(reply["error"]["code"], code, "{request}\n-> {reply}");
    let message = reply["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.to_lowercase().contains(&mentions.to_lowercase()),
        "the reason {message:?} does not mention {mentions:?} (request {request})"
    );
    eprintln!("  {code}: {message}");
    // The reason is short enough to show, even for a 20 KB URL: no echo of the whole input.
    assert!(
        message.len() < 600,
        "a {}-byte error message",
        message.len()
    );
}

/// A hostile request, the error code it must get and a word its reason must contain.
type Case = (Value, &'static str, &'static str);

const INVALID: &str = "invalid_argument";
const BAD: &str = "bad_request";

/// An add of a harmless URL with `extra`'s fields.
fn add(extra: Value) -> Value {
    let mut r = json!({"cmd": "add", "url": "http://127.0.0.1:9/file.bin"});
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

fn url(url: &str) -> Value {
    json!({"cmd": "add", "url": url})
}

fn name(name: &str) -> Value {
    add(json!({"filename": name}))
}

fn settings(settings: Value) -> Value {
    json!({"cmd": "set_settings", "settings": settings})
}

fn hostile_urls() -> Vec<Case> {
    let long_url = format!("http://127.0.0.1/{}", "a".repeat(20_000));
    vec![
        (url("file:///etc/passwd"), INVALID, "http"),
        (url("ftp://127.0.0.1/a"), INVALID, "http"),
        (url("javascript:alert(1)"), INVALID, "http"),
        (url("data:text/plain,hi"), INVALID, "http"),
        (url("chrome://settings"), INVALID, "http"),
        (url("http://user:secret@127.0.0.1/a"), INVALID, "password"),
        (url("http://user@127.0.0.1/a"), INVALID, "user"),
        (url(&long_url), INVALID, "at most"),
        (url(""), INVALID, "url"),
        (url("http://"), INVALID, "url"),
        (url("/etc/passwd"), INVALID, "url"),
    ]
}

fn hostile_names() -> Vec<Case> {
    vec![
        (name("../../.bashrc"), INVALID, "separator"),
        (name("/etc/cron.d/evil"), INVALID, "separator"),
        (name("..\\..\\evil.bat"), INVALID, "separator"),
        (name("a\u{0}b.txt"), INVALID, "control"),
        (name("a\nb.txt"), INVALID, "control"),
        (name(".."), INVALID, "not a file name"),
        (name("."), INVALID, "not a file name"),
        (name(""), INVALID, "empty"),
        (name("CON"), INVALID, "reserved"),
        (name("nul.txt"), INVALID, "reserved"),
        (name("LPT1.log"), INVALID, "reserved"),
        (name(&"x".repeat(10_240)), INVALID, "at most"),
    ]
}

/// Numbers out of range, and values of the wrong type, which the JSON layer refuses: its message names the expected
/// type but not the field (serde loses the path inside an internally tagged, flattened enum).
fn hostile_numbers() -> Vec<Case> {
    vec![
        (add(json!({"threads": 0})), INVALID, "threads"),
        (add(json!({"threads": 33})), INVALID, "threads"),
        (
            add(json!({"threads": 4_294_967_295u64})),
            INVALID,
            "threads",
        ),
        (add(json!({"threads": -1})), BAD, "expected"),
        (add(json!({"threads": 1e9})), BAD, "expected"),
        (add(json!({"retries": 101})), INVALID, "retries"),
        (
            add(json!({"retries": 4_294_967_295u64})),
            INVALID,
            "retries",
        ),
        (add(json!({"retries": -5})), BAD, "expected"),
        (add(json!({"bandwidth_limit": -1})), BAD, "expected"),
        (add(json!({"bandwidth_limit": "fast"})), BAD, "expected"),
        (add(json!({"bandwidth_limit": 1.5e30})), BAD, "expected"),
    ]
}

/// Headers and referrer, settings, and ids that name nothing.
fn hostile_fields() -> Vec<Case> {
    vec![
        (
            add(json!({"headers": {"X-A": "b\r\nX-Injected: 1"}})),
            INVALID,
            "header",
        ),
        (
            add(json!({"headers": {"Bad Name": "v"}})),
            INVALID,
            "header",
        ),
        (add(json!({"referrer": "not a url"})), INVALID, "referrer"),
        (add(json!({"surprise": true})), BAD, "surprise"),
        (
            settings(json!({"max_concurrent": 0})),
            INVALID,
            "max_concurrent",
        ),
        (settings(json!({"default_threads": 99})), INVALID, "threads"),
        (
            settings(json!({"default_retries": 1000})),
            INVALID,
            "retries",
        ),
        (
            settings(json!({"stall_timeout_secs": 0})),
            INVALID,
            "stall_timeout",
        ),
        (
            settings(json!({"download_dir": "../../tmp"})),
            INVALID,
            "absolute",
        ),
        (settings(json!({"bandwidth_limit": -1})), BAD, "expected"),
        (
            json!({"cmd": "pause", "download_id": 424242}),
            "not_found",
            "424242",
        ),
        (
            json!({"cmd": "remove", "download_id": 18_446_744_073_709_551_615u64}),
            "not_found",
            "no download",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_errors_and_change_nothing() {
    bounded(90, async {
        tokio::task::block_in_place(|| {
            let sdm = Sandbox::new();
            let mut relay = sdm.relay();
            let cases = [
                hostile_urls(),
                hostile_names(),
                hostile_numbers(),
                hostile_fields(),
            ]
            .concat();
            let count = cases.len();
            for (i, (request, code, mentions)) in cases.into_iter().enumerate() {
                refused(&mut relay, 100 + i as u64, request, code, mentions);
            }

            // Nothing was queued or written, and settings are as they were.
            let list = relay.call(json!({"id": 1, "cmd": "list"}));
            assert_eq!(list["result"]["total"], 0, "{list}");
            let settings = relay.call(json!({"id": 2, "cmd": "get_settings"}));
            let defaults = serde_json::to_value(protocol::Settings::default()).unwrap();
            assert_eq!(settings["result"]["settings"], defaults);
            let written: Vec<_> = std::fs::read_dir(sdm.downloads()).unwrap().collect();
            assert!(written.is_empty(), "{written:?}");
            eprintln!("hostile input: {count} requests refused with a clear error");
        });
    })
    .await;
}

/// The largest bandwidth cap the wire allows is accepted and means "fast", not an overflow or a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_bandwidth_limit_does_not_overflow() {
    bounded(60, async {
        let server = sdm_tests::TestServer::start().await;
        let file = server.serve("/max.bin", sdm_tests::FileSpec::new(3 << 20).seed(210));
        let mut sdm = Sandbox::new();
        let mut client = sdm.start_and_connect().await;
        let id = crate::fault_support::add(
            &mut client,
            protocol::AddRequest {
                url: file.url().to_string(),
                bandwidth_limit: Some(u64::MAX),
                ..protocol::AddRequest::default()
            },
        )
        .await;
        let _: protocol::SettingsResult = client
            .call(protocol::Command::SetSettings {
                settings: protocol::SettingsPatch {
                    bandwidth_limit: Some(u64::MAX),
                    ..protocol::SettingsPatch::default()
                },
            })
            .await
            .expect("the largest global cap is accepted");
        let done = crate::fault_support::wait_info(&mut client, id, 30, "finished", |d| {
            d.status.is_finished()
        })
        .await;
        assert_eq!(done.status, protocol::Status::Completed, "{done:?}");
        crate::support::assert_exact(std::path::Path::new(&done.path), &file);
    })
    .await;
}
