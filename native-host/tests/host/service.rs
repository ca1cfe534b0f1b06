//! `sdm serve` on its own: the lock, file permissions, stale sockets and signals.

use std::os::unix::net::UnixListener;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::support::{Guard, STEP, Sandbox, mode, wait_exit};

fn serve(sandbox: &Sandbox) -> Guard {
    let child = sandbox
        .command(&["serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = Guard(child);
    sandbox.wait_for_socket();
    guard
}

#[test]
fn a_second_service_for_the_same_data_dir_is_refused() {
    let sandbox = Sandbox::new();
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
    let sandbox = Sandbox::new();
    let _service = serve(&sandbox);
    assert_eq!(mode(&sandbox.data()), 0o700);
    assert_eq!(mode(&sandbox.socket()), 0o600);
    assert_eq!(mode(&sandbox.data().join("service.lock")), 0o600);
}

#[test]
fn the_socket_is_private_even_in_a_data_dir_the_user_opened() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
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
    let sandbox = Sandbox::new();
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
    let sandbox = Sandbox::new();
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
    let sandbox = Sandbox::new();
    assert_eq!(sandbox.ok(&["ls"]).trim(), "no downloads");
    assert!(sandbox.service_pid().is_some());
    let log = std::fs::read_to_string(sandbox.data().join("service.log")).unwrap();
    assert!(log.contains("listening"), "{log}");
}
