//! `sdm serve` on its own: the lock, file permissions, stale sockets, signals, and a crash between saving an add and
//! answering it.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::support::{FileServer, Guard, STEP, Sandbox, mode, sandbox, wait_exit};

fn serve(sandbox: &Sandbox) -> Guard {
    let child = sandbox
        .command(&["serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    sandbox.wait_until_serving(Some(&mut guard.0));
    guard
}

#[test]
fn a_second_service_for_the_same_data_dir_is_refused() {
    let sandbox = sandbox();
    let _first = serve(&sandbox);
    let err = sandbox.fails(&["serve"]);
    assert!(
        err.contains("another sdm service is already running for"),
        "{err}"
    );
    assert!(err.contains(&sandbox.data().display().to_string()), "{err}");
    // The first one still answers.
    let mut relay = sandbox.relay();
    assert_eq!(relay.call(json!({"id": 1, "cmd": "ping"}))["ok"], true);
    assert!(relay.close().success());
}

#[test]
fn the_data_dir_and_socket_are_private() {
    let sandbox = sandbox();
    let _service = serve(&sandbox);
    assert_eq!(mode(&sandbox.data()), 0o700);
    assert_eq!(mode(&sandbox.socket()), 0o600);
    assert_eq!(mode(&sandbox.data().join("service.lock")), 0o600);
}

#[test]
fn the_socket_is_private_even_in_a_data_dir_the_user_opened() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = sandbox();
    std::fs::create_dir_all(sandbox.data()).unwrap();
    std::fs::set_permissions(sandbox.data(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let _service = serve(&sandbox);
    assert_eq!(mode(&sandbox.socket()), 0o600);
    // No staging folder is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(sandbox.data())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".bind"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let sandbox = sandbox();
    std::fs::create_dir_all(sandbox.data()).unwrap();
    // A socket file nobody listens on, as a crashed service leaves it.
    drop(UnixListener::bind(sandbox.socket()).unwrap());
    assert!(sandbox.socket().exists());
    let mut relay = sandbox.relay();
    assert_eq!(relay.call(json!({"id": 1, "cmd": "ping"}))["ok"], true);
    assert!(relay.close().success());
}

#[test]
fn sigterm_stops_the_service_cleanly() {
    let sandbox = sandbox();
    let mut service = serve(&sandbox);
    crate::support::signal(service.0.id(), "TERM");
    let status = wait_exit(&mut service.0, STEP);
    assert_eq!(status.code(), Some(0));
    assert!(!sandbox.socket().exists(), "the socket is removed on exit");

    // The lock went with it: a new service starts.
    let _again = serve(&sandbox);
    std::thread::sleep(Duration::from_millis(100));
    assert!(sandbox.service_pid().is_some());
}

#[test]
fn the_cli_starts_the_service_too() {
    let sandbox = sandbox();
    assert_eq!(sandbox.ok(&["ls"]).trim(), "no downloads");
    assert!(sandbox.service_pid().is_some());
    let log = std::fs::read_to_string(sandbox.data().join("service.log")).unwrap();
    assert!(log.contains("listening"), "{log}");
}

/// Connect to the service's socket, waiting (up to [`STEP`]) for a service to accept: after a crash, the socket file
/// left behind answers nobody until the next service replaces it.
fn connect(sandbox: &Sandbox) -> UnixStream {
    let deadline = std::time::Instant::now() + STEP;
    loop {
        match UnixStream::connect(sandbox.socket()) {
            Ok(stream) => {
                stream.set_read_timeout(Some(STEP)).unwrap();
                return stream;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "no service accepts on the socket: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send(conn: &mut UnixStream, request: serde_json::Value) {
    conn.write_all(&protocol::codec::encode(request.to_string().as_bytes()))
        .unwrap();
}

/// The next frame that is a reply (events skipped).
fn reply(conn: &mut UnixStream) -> serde_json::Value {
    loop {
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).expect("a frame from the service");
        let mut body = vec![0u8; u32::from_ne_bytes(len) as usize];
        conn.read_exact(&mut body).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if value.get("event").is_none() {
            return value;
        }
    }
}

#[test]
fn a_crash_between_saving_a_keyed_add_and_replying_loses_only_the_reply() {
    let sandbox = sandbox();
    let body = vec![7u8; 64 * 1024];
    let server = FileServer::start(body.clone());
    let flag = sandbox.root.path().join("crash-after-add");
    std::fs::write(&flag, b"").unwrap();
    let mut crashing = Guard(
        sandbox
            .command(&["serve"])
            .env("SDM_TEST_CRASH_AFTER_ADD", &flag)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut conn = connect(&sandbox);
    let add = json!({"id": 1, "cmd": "add", "url": server.url("captured.bin"),
                     "client_key": "capture-1", "expect": {"size": body.len()}});
    send(&mut conn, add.clone());
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .expect("the connection drops, it does not hang");
    assert!(
        rest.is_empty(),
        "the service replied before crashing: {:?}",
        String::from_utf8_lossy(&rest)
    );
    let status = wait_exit(&mut crashing.0, STEP);
    assert_eq!(status.code(), Some(sdm::engine::CRASH_EXIT_CODE));
    assert!(!flag.exists(), "the fault is spent");

    // Restarted, the service has the download the client never heard about, once.
    let _service = serve(&sandbox);
    let mut conn = connect(&sandbox);
    send(
        &mut conn,
        json!({"id": 2, "cmd": "find", "client_key": "capture-1"}),
    );
    let found = reply(&mut conn);
    assert_eq!(found["id"], 2, "{found}");
    let download = &found["result"]["download"];
    assert_eq!(download["url"], server.url("captured.bin"), "{found}");
    send(&mut conn, json!({"id": 3, "cmd": "list"}));
    let list = reply(&mut conn);
    assert_eq!(list["result"]["total"], 1, "{list}");
    assert_eq!(list["result"]["downloads"][0]["id"], download["id"]);

    // Sent again (the client retrying its add), it is the same download.
    let mut again = add;
    again["id"] = json!(4);
    send(&mut conn, again);
    let again = reply(&mut conn);
    assert_eq!(
        again["result"],
        json!({"id": download["id"], "existing": true})
    );
}
