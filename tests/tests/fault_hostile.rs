//! Hostile requests through the real relay, as a compromised or buggy page could send them: other URL schemes,
//! credentials, absurd lengths; file names with traversal, absolute paths, NUL, device names, 10 KB; numbers out of
//! range; header injection. Each gets an error with a code and a reason, and nothing is queued or written.

use serde_json::{Value, json};

use crate::fault_support::Sandbox;
use crate::support::bounded;

/// Send `request` (given an id here) and expect an error with `code` whose message mentions `mentions`.
fn refused(
    relay: &mut crate::fault_support::Relay,
    id: u64,
    mut request: Value,
    code: &str,
    mentions: &str,
) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_errors_and_change_nothing() {
    bounded(90, async {
        tokio::task::block_in_place(|| {
            let sdm = Sandbox::new();
            let mut relay = sdm.relay();
            let ok = "http://127.0.0.1:9/file.bin";
            let long_url = format!("http://127.0.0.1/{}", "a".repeat(20_000));
            let add = |extra: Value| {
                let mut r = json!({"cmd": "add", "url": ok});
                for (k, v) in extra.as_object().unwrap() {
                    r[k] = v.clone();
                }
                r
            };
            let cases: Vec<(Value, &str, &str)> = vec![
                // URLs.
                (
                    json!({"cmd": "add", "url": "file:///etc/passwd"}),
                    "invalid_argument",
                    "http",
                ),
                (
                    json!({"cmd": "add", "url": "ftp://127.0.0.1/a"}),
                    "invalid_argument",
                    "http",
                ),
                (
                    json!({"cmd": "add", "url": "javascript:alert(1)"}),
                    "invalid_argument",
                    "http",
                ),
                (
                    json!({"cmd": "add", "url": "data:text/plain,hi"}),
                    "invalid_argument",
                    "http",
                ),
                (
                    json!({"cmd": "add", "url": "chrome://settings"}),
                    "invalid_argument",
                    "http",
                ),
                (
                    json!({"cmd": "add", "url": "http://user:secret@127.0.0.1/a"}),
                    "invalid_argument",
                    "password",
                ),
                (
                    json!({"cmd": "add", "url": "http://user@127.0.0.1/a"}),
                    "invalid_argument",
                    "user",
                ),
                (
                    json!({"cmd": "add", "url": long_url}),
                    "invalid_argument",
                    "at most",
                ),
                (json!({"cmd": "add", "url": ""}), "invalid_argument", "url"),
                (
                    json!({"cmd": "add", "url": "http://"}),
                    "invalid_argument",
                    "url",
                ),
                (
                    json!({"cmd": "add", "url": "/etc/passwd"}),
                    "invalid_argument",
                    "url",
                ),
                // File names.
                (
                    add(json!({"filename": "../../.bashrc"})),
                    "invalid_argument",
                    "separator",
                ),
                (
                    add(json!({"filename": "/etc/cron.d/evil"})),
                    "invalid_argument",
                    "separator",
                ),
                (
                    add(json!({"filename": "..\\..\\evil.bat"})),
                    "invalid_argument",
                    "separator",
                ),
                (
                    add(json!({"filename": "a\u{0}b.txt"})),
                    "invalid_argument",
                    "control",
                ),
                (
                    add(json!({"filename": "a\nb.txt"})),
                    "invalid_argument",
                    "control",
                ),
                (
                    add(json!({"filename": ".."})),
                    "invalid_argument",
                    "not a file name",
                ),
                (
                    add(json!({"filename": "."})),
                    "invalid_argument",
                    "not a file name",
                ),
                (add(json!({"filename": ""})), "invalid_argument", "empty"),
                (
                    add(json!({"filename": "CON"})),
                    "invalid_argument",
                    "reserved",
                ),
                (
                    add(json!({"filename": "nul.txt"})),
                    "invalid_argument",
                    "reserved",
                ),
                (
                    add(json!({"filename": "LPT1.log"})),
                    "invalid_argument",
                    "reserved",
                ),
                (
                    add(json!({"filename": "x".repeat(10_240)})),
                    "invalid_argument",
                    "at most",
                ),
                // Numbers out of range.
                (add(json!({"threads": 0})), "invalid_argument", "threads"),
                (add(json!({"threads": 33})), "invalid_argument", "threads"),
                (
                    add(json!({"threads": 4_294_967_295u64})),
                    "invalid_argument",
                    "threads",
                ),
                (add(json!({"threads": -1})), "bad_request", "expected"),
                (add(json!({"threads": 1e9})), "bad_request", "expected"),
                (add(json!({"retries": 101})), "invalid_argument", "retries"),
                (
                    add(json!({"retries": 4_294_967_295u64})),
                    "invalid_argument",
                    "retries",
                ),
                (add(json!({"retries": -5})), "bad_request", "expected"),
                (
                    add(json!({"bandwidth_limit": -1})),
                    "bad_request",
                    "expected",
                ),
                (
                    add(json!({"bandwidth_limit": "fast"})),
                    "bad_request",
                    "expected",
                ),
                (
                    add(json!({"bandwidth_limit": 1.5e30})),
                    "bad_request",
                    "expected",
                ),
                // Headers and referrer.
                (
                    add(json!({"headers": {"X-A": "b\r\nX-Injected: 1"}})),
                    "invalid_argument",
                    "header",
                ),
                (
                    add(json!({"headers": {"Bad Name": "v"}})),
                    "invalid_argument",
                    "header",
                ),
                (
                    add(json!({"referrer": "not a url"})),
                    "invalid_argument",
                    "referrer",
                ),
                (add(json!({"surprise": true})), "bad_request", "surprise"),
                // Settings.
                (
                    json!({"cmd": "set_settings", "settings": {"max_concurrent": 0}}),
                    "invalid_argument",
                    "max_concurrent",
                ),
                (
                    json!({"cmd": "set_settings", "settings": {"default_threads": 99}}),
                    "invalid_argument",
                    "threads",
                ),
                (
                    json!({"cmd": "set_settings", "settings": {"default_retries": 1000}}),
                    "invalid_argument",
                    "retries",
                ),
                (
                    json!({"cmd": "set_settings", "settings": {"stall_timeout_secs": 0}}),
                    "invalid_argument",
                    "stall_timeout",
                ),
                (
                    json!({"cmd": "set_settings", "settings": {"download_dir": "../../tmp"}}),
                    "invalid_argument",
                    "absolute",
                ),
                (
                    json!({"cmd": "set_settings", "settings": {"bandwidth_limit": -1}}),
                    "bad_request",
                    "expected",
                ),
                // Ids that name nothing.
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
            ];
            // Values of the wrong type are refused by the JSON layer, whose message names the expected type but not
            // the field (serde loses the path inside an internally tagged, flattened enum).
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
        tokio::task::block_in_place(|| sdm.start());
        let mut client = sdm.client().await;
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
