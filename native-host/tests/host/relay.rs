//! The relay, driven over its stdin and stdout as a browser drives it.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{STEP, assert_error, is_sdm_service, sandbox};

#[test]
fn every_command_answers_with_its_request_id() {
    let sandbox = sandbox();
    let mut relay = sandbox.relay();

    let ping = relay.call(json!({"id": 1, "cmd": "ping"}));
    assert_eq!(ping["ok"], true);
    assert_eq!(ping["result"]["version"], env!("CARGO_PKG_VERSION"));

    let settings = relay.call(json!({"id": 2, "cmd": "get_settings"}));
    assert_eq!(settings["result"]["settings"]["max_concurrent"], 3);

    let changed =
        relay.call(json!({"id": 3, "cmd": "set_settings", "settings": {"max_concurrent": 5}}));
    assert_eq!(changed["ok"], true, "{changed}");
    assert_eq!(changed["result"]["settings"]["max_concurrent"], 5);
    let again = relay.call(json!({"id": 4, "cmd": "get_settings"}));
    assert_eq!(again["result"]["settings"]["max_concurrent"], 5);
    let refused =
        relay.call(json!({"id": 5, "cmd": "set_settings", "settings": {"max_concurrent": 0}}));
    assert_error(&refused, json!(5), "invalid_argument");

    let list = relay.call(json!({"id": 6, "cmd": "list"}));
    assert_eq!(list["result"], json!({"downloads": [], "total": 0}));
    let history = relay.call(json!({"id": 7, "cmd": "history", "offset": 0, "limit": 10}));
    assert_eq!(history["result"], json!({"items": [], "total": 0}));
    let cleared = relay.call(json!({"id": 8, "cmd": "clear_history"}));
    assert_eq!(cleared["ok"], true, "{cleared}");

    for (id, cmd) in [
        (9, "pause"),
        (10, "resume"),
        (11, "cancel"),
        (12, "remove"),
        (13, "open"),
    ] {
        let reply = relay.call(json!({"id": id, "cmd": cmd, "download_id": 4242}));
        assert_error(&reply, json!(id), "not_found");
    }

    let subscribed = relay.call(json!({"id": 14, "cmd": "subscribe"}));
    assert_eq!(subscribed["ok"], true);
    relay.send(json!({"id": 15, "cmd": "set_settings", "settings": {"max_concurrent": 2}}));
    let event = relay.event();
    assert_eq!(event["event"], "settings", "{event}");
    assert_eq!(event["settings"]["max_concurrent"], 2);

    assert!(relay.close().success());
}

#[test]
fn firefox_and_windows_style_arguments_start_the_relay_too() {
    let sandbox = sandbox();
    let manifest = sandbox
        .home()
        .join(".mozilla/native-messaging-hosts/com.sdm.host.json");
    let manifest = manifest.display().to_string();
    let mut relay = sandbox.relay_with(&[&manifest, protocol::GECKO_ID]);
    assert_eq!(relay.call(json!({"id": 1, "cmd": "ping"}))["ok"], true);
    assert!(relay.close().success());

    let mut relay = sandbox.relay_with(&["chrome-extension://abc/", "--parent-window=0"]);
    assert_eq!(relay.call(json!({"id": 2, "cmd": "ping"}))["ok"], true);
    assert!(relay.close().success());

    let log = std::fs::read_to_string(sandbox.data().join("relay.log")).unwrap();
    assert!(log.contains("firefox sdm@sdm.dev"), "{log}");
    assert!(log.contains("--parent-window=0"), "{log}");
}

#[test]
fn malformed_frames_get_bad_request_and_the_relay_carries_on() {
    let sandbox = sandbox();
    let mut relay = sandbox.relay();

    relay.send_body(b"this is not json");
    assert_error(&relay.reply(), json!(null), "bad_request");

    relay.send_body(br#"{"cmd":"ping"}"#);
    assert_error(&relay.reply(), json!(null), "bad_request");

    let unknown = relay.call(json!({"id": 21, "cmd": "explode"}));
    assert_error(&unknown, json!(21), "bad_request");

    let extra = relay.call(json!({"id": 22, "cmd": "pause", "download_id": 1, "extra": true}));
    assert_error(&extra, json!(22), "bad_request");

    let empty = relay.call(json!({"id": 23, "cmd": "add", "url": ""}));
    assert_eq!(empty["ok"], false, "{empty}");

    let ping = relay.call(json!({"id": 24, "cmd": "ping"}));
    assert_eq!(ping["ok"], true);
    assert!(relay.close().success());
}

#[test]
fn an_oversize_length_prefix_is_refused_and_ends_the_relay() {
    let sandbox = sandbox();
    let mut relay = sandbox.relay();
    // 64 MiB + 1: over the limit, and no body follows.
    let len = (protocol::MAX_INCOMING_FRAME as u32 + 1).to_ne_bytes();
    relay.send_raw(&len);
    assert_error(&relay.reply(), json!(null), "too_large");
    let status = relay.wait();
    assert!(!status.success(), "a broken stream is not a clean exit");
}

#[test]
fn the_relay_exits_cleanly_when_stdin_closes() {
    let sandbox = sandbox();
    let mut relay = sandbox.relay();
    assert_eq!(relay.call(json!({"id": 1, "cmd": "ping"}))["ok"], true);
    let status = relay.close();
    assert_eq!(status.code(), Some(0));

    // Even before any request, and with half a frame pending.
    let mut relay = sandbox.relay();
    relay.send_raw(&[7, 0]);
    assert_eq!(relay.close().code(), Some(0));
}

#[test]
fn the_relay_starts_the_service_which_outlives_it() {
    let sandbox = sandbox();
    assert_eq!(sandbox.service_pid(), None);
    let mut relay = sandbox.relay();
    assert_eq!(relay.call(json!({"id": 1, "cmd": "ping"}))["ok"], true);
    let pid = sandbox.service_pid().expect("a service runs now");
    assert!(relay.close().success());

    std::thread::sleep(Duration::from_millis(300));
    assert!(is_sdm_service(pid), "the service went away with the relay");

    // A second browser connection finds the same service and the same state.
    let mut relay = sandbox.relay();
    assert_eq!(
        relay.call(json!({"id": 1, "cmd": "set_settings", "settings": {"max_concurrent": 7}}))["ok"],
        true
    );
    assert!(relay.close().success());
    let mut relay = sandbox.relay();
    let settings = relay.call(json!({"id": 2, "cmd": "get_settings"}));
    assert_eq!(settings["result"]["settings"]["max_concurrent"], 7);
    assert_eq!(sandbox.service_pid(), Some(pid));
    assert!(relay.close().success());
}

#[test]
fn the_relay_restarts_a_service_that_died() {
    let sandbox = sandbox();
    let mut relay = sandbox.relay();
    assert_eq!(relay.call(json!({"id": 1, "cmd": "ping"}))["ok"], true);
    let first = sandbox.service_pid().unwrap();
    crate::support::signal(first, "KILL");

    // A request racing the relay's discovery may be answered `unavailable`; the next ones reach a new service.
    let deadline = Instant::now() + STEP;
    let mut id = 2;
    loop {
        let reply = relay.call(json!({"id": id, "cmd": "ping"}));
        if reply["ok"] == true {
            break;
        }
        assert_error(&reply, json!(id), "unavailable");
        assert!(Instant::now() < deadline, "no new service");
        id += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let second = sandbox.service_pid().expect("a new service");
    assert_ne!(first, second);
    assert!(relay.close().success());
}

#[test]
fn a_subscribed_relay_subscribes_again_after_a_service_restart() {
    let sandbox = sandbox();
    let mut relay = sandbox.relay();
    assert_eq!(relay.call(json!({"id": 1, "cmd": "subscribe"}))["ok"], true);
    crate::support::signal(sandbox.service_pid().unwrap(), "KILL");

    let deadline = Instant::now() + STEP;
    let mut id = 2;
    loop {
        relay.send(json!({"id": id, "cmd": "set_settings", "settings": {"max_concurrent": 4}}));
        // The event (if subscribed again) and the reply come in either order.
        let first = relay.recv();
        if first.get("event").is_some() {
            assert_eq!(first["event"], "settings");
            assert_eq!(relay.reply()["id"], id);
            break;
        }
        assert!(Instant::now() < deadline, "never subscribed again");
        if first["ok"] == true {
            let event = relay.event();
            assert_eq!(event["event"], "settings");
            break;
        }
        id += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    // The relay's own subscribe reply was not passed on: nothing else is waiting.
    assert!(relay.close().success());
}

#[test]
fn without_a_service_requests_are_unavailable_with_their_ids() {
    let sandbox = sandbox();
    // A file where the data directory should be: no service can start.
    std::fs::write(sandbox.data(), b"not a directory").unwrap();
    let mut relay = sandbox.relay();
    let reply = relay.call(json!({"id": 31, "cmd": "ping"}));
    assert_error(&reply, json!(31), "unavailable");
    let reply = relay.call(json!({"id": 32, "cmd": "list"}));
    assert_error(&reply, json!(32), "unavailable");
    relay.send_body(b"{");
    assert_error(&relay.reply(), json!(null), "bad_request");
    assert!(relay.close().success());
}

#[test]
fn a_list_too_large_for_one_frame_is_paged() {
    let sandbox = sandbox();
    let mut relay = sandbox.relay();
    // Port 1 refuses connections, so these fail at once and stay in the list.
    let padding = "p".repeat(8 * 1024);
    for i in 0..300 {
        let url = format!("http://127.0.0.1:1/{i}/{padding}");
        let reply = relay.call(json!({"id": 1000 + i, "cmd": "add", "url": url}));
        assert_eq!(reply["ok"], true, "{reply}");
    }
    // No limit: the service must shrink the page to fit 1 MiB (the driver checks every frame's size).
    let first = relay.call(json!({"id": 1, "cmd": "list"}));
    let total = first["result"]["total"].as_u64().unwrap();
    assert_eq!(total, 300);
    let page = first["result"]["downloads"].as_array().unwrap().len();
    assert!(page > 0 && page < 300, "page of {page}");

    // Paging on from the page's end reaches every download exactly once.
    let mut seen = std::collections::BTreeSet::new();
    let mut offset = 0;
    let mut id = 2;
    while offset < 300 {
        let reply = relay.call(json!({"id": id, "cmd": "list", "offset": offset}));
        let downloads = reply["result"]["downloads"].as_array().unwrap().clone();
        assert!(!downloads.is_empty(), "empty page at {offset}");
        for d in &downloads {
            assert!(seen.insert(d["id"].as_u64().unwrap()));
        }
        offset += downloads.len();
        id += 1;
    }
    assert_eq!(seen.len(), 300);
    assert!(relay.close().success());
}

#[test]
fn relays_started_together_share_one_service() {
    let sandbox = sandbox();
    let mut relays: Vec<_> = (0..4).map(|_| sandbox.relay()).collect();
    for (i, relay) in relays.iter_mut().enumerate() {
        let reply = relay.call(json!({"id": i, "cmd": "ping"}));
        assert_eq!(reply["ok"], true, "{reply}");
    }
    let pid = sandbox.service_pid().expect("one service");
    // Services that lost the race exit at once; wait for them to be gone, then only the winner is left.
    let services_here = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&p| is_sdm_service(p))
            .filter(|&p| {
                std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|env| {
                    let needle = format!("SDM_HOME={}", sandbox.data().display());
                    env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes())
                })
            })
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + STEP;
    while services_here() != vec![pid] {
        assert!(Instant::now() < deadline, "services: {:?}", services_here());
        std::thread::sleep(Duration::from_millis(50));
    }
    for relay in relays {
        assert!(relay.close().success());
    }
}
