//! The command-line faces.

use serde_json::Value;

use crate::support::{FileServer, sandbox};

#[test]
fn install_dir_writes_a_chromium_manifest_naming_this_binary() {
    let sandbox = sandbox();
    let dir = sandbox.root.path().join("profile/NativeMessagingHosts");
    let dir_arg = dir.display().to_string();
    let out = sandbox.ok(&["install", "--dir", &dir_arg]);
    let file = dir.join("com.sdm.host.json");
    assert!(out.contains(&file.display().to_string()), "{out}");

    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_sdm")).unwrap();
    assert_eq!(manifest["name"], "com.sdm.host");
    assert_eq!(manifest["type"], "stdio");
    assert_eq!(manifest["path"], exe.display().to_string());
    assert_eq!(
        manifest["allowed_origins"],
        serde_json::json!([format!("chrome-extension://{}/", protocol::EXTENSION_ID)])
    );
    assert!(
        manifest["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );

    let out = sandbox.ok(&["install", "--dir", &dir_arg, "--uninstall"]);
    assert!(out.contains("removed"), "{out}");
    assert!(!file.exists());
}

#[test]
fn install_per_browser_uses_each_browsers_folder_and_format() {
    let sandbox = sandbox();
    // No browser has run in this home: a bare `install` says what to do.
    let err = sandbox.fails(&["install"]);
    assert!(err.contains("--browser"), "{err}");

    sandbox.ok(&["install", "--browser", "firefox", "--browser", "chromium"]);
    let firefox = sandbox
        .home()
        .join(".mozilla/native-messaging-hosts/com.sdm.host.json");
    let chromium = sandbox
        .home()
        .join(".config/chromium/NativeMessagingHosts/com.sdm.host.json");
    let f: Value = serde_json::from_str(&std::fs::read_to_string(&firefox).unwrap()).unwrap();
    assert_eq!(
        f["allowed_extensions"],
        serde_json::json!([protocol::GECKO_ID])
    );
    let c: Value = serde_json::from_str(&std::fs::read_to_string(&chromium).unwrap()).unwrap();
    assert!(c["allowed_origins"].is_array());

    // Now both browsers are "found": a bare install refreshes them, a bare uninstall removes them.
    let out = sandbox.ok(&["install"]);
    assert!(
        out.contains("(firefox)") && out.contains("(chromium)"),
        "{out}"
    );
    sandbox.ok(&["install", "--uninstall"]);
    assert!(!firefox.exists() && !chromium.exists());

    let err = sandbox.fails(&["install", "--browser", "netscape"]);
    assert!(err.contains("unknown browser"), "{err}");
}

#[test]
fn get_validates_its_arguments() {
    let sandbox = sandbox();
    for (args, needle) in [
        (&["get", "http://127.0.0.1:1/a", "-c", "0"][..], "1..=32"),
        (&["get", "http://127.0.0.1:1/a", "-c", "33"][..], "1..=32"),
        (
            &["get", "http://127.0.0.1:1/a", "--header", "NoColon"][..],
            "colon",
        ),
        (
            &["get", "http://127.0.0.1:1/a", "--sha256", "abc"][..],
            "64 hexadecimal",
        ),
        (
            &["get", "http://127.0.0.1:1/a", "--limit", "fast"][..],
            "byte count",
        ),
        (&["get", "ftp://127.0.0.1/a"][..], "http or https"),
    ] {
        let err = sandbox.fails(args);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn get_fails_cleanly_on_a_refused_connection() {
    let sandbox = sandbox();
    let target = sandbox.root.path().join("out.bin");
    let target_arg = target.display().to_string();
    let err = sandbox.fails(&[
        "get",
        "http://127.0.0.1:1/a",
        "-o",
        &target_arg,
        "--retries",
        "0",
    ]);
    assert!(err.starts_with("sdm: "), "{err}");
    assert!(!target.exists());
}

#[test]
fn get_downloads_a_file_and_prints_its_path() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let server = FileServer::start(body.clone());
    let sandbox = sandbox();
    let target = sandbox.root.path().join("file.bin");
    let target_arg = target.display().to_string();
    let out = sandbox.ok(&["get", &server.url("file.bin"), "-o", &target_arg, "-c", "4"]);
    assert_eq!(out.trim(), target_arg);
    assert_eq!(std::fs::read(&target).unwrap(), body);
}

#[test]
fn add_then_wait_completes_and_ls_shows_it() {
    let body = b"hello from the test server\n".repeat(1000);
    let server = FileServer::start(body.clone());
    let sandbox = sandbox();
    let id = sandbox.ok(&["add", &server.url("greeting.txt")]);
    let id = id.trim();
    assert!(id.parse::<u64>().is_ok(), "{id}");
    let path = sandbox.ok(&["wait", id, "--timeout", "10"]);
    assert_eq!(std::fs::read(path.trim()).unwrap(), body);
    assert!(
        path.trim()
            .starts_with(&sandbox.downloads().display().to_string()),
        "{path}"
    );

    let table = sandbox.ok(&["ls"]);
    assert!(
        table.contains("completed") && table.contains("greeting.txt"),
        "{table}"
    );
    let json: Value = serde_json::from_str(&sandbox.ok(&["ls", "--json"])).unwrap();
    assert_eq!(json[0]["status"], "completed");
}

#[test]
fn wait_fails_for_a_failed_or_unknown_download() {
    let sandbox = sandbox();
    let id = sandbox.ok(&["add", "http://127.0.0.1:1/refused", "--retries", "0"]);
    let err = sandbox.fails(&["wait", id.trim(), "--timeout", "10"]);
    assert!(err.contains("failed"), "{err}");
    let err = sandbox.fails(&["wait", "999"]);
    assert!(err.contains("999"), "{err}");
}

#[test]
fn service_commands_report_errors_with_their_code() {
    let sandbox = sandbox();
    for cmd in ["pause", "resume", "cancel", "rm", "open"] {
        let err = sandbox.fails(&[cmd, "12345"]);
        assert!(err.contains("not_found"), "{cmd}: {err}");
    }
    let err = sandbox.fails(&["add", "not a url"]);
    assert!(err.contains("not a valid URL"), "{err}");
}

#[test]
fn settings_show_and_change() {
    let sandbox = sandbox();
    let shown: Value = serde_json::from_str(&sandbox.ok(&["settings"])).unwrap();
    assert_eq!(shown["max_concurrent"], 3);
    let changed: Value = serde_json::from_str(&sandbox.ok(&[
        "settings",
        "--set",
        "max_concurrent=4",
        "--set",
        "capture_exclude=example.com,example.org",
    ]))
    .unwrap();
    assert_eq!(changed["max_concurrent"], 4);
    assert_eq!(
        changed["capture_exclude"],
        serde_json::json!(["example.com", "example.org"])
    );

    let err = sandbox.fails(&["settings", "--set", "colour=blue"]);
    assert!(
        err.contains("unknown setting") && err.contains("max_concurrent"),
        "{err}"
    );
    let err = sandbox.fails(&["settings", "--set", "max_concurrent=0"]);
    assert!(err.contains("invalid_argument"), "{err}");
}

#[test]
fn history_lists_and_clears() {
    let sandbox = sandbox();
    assert_eq!(sandbox.ok(&["history"]).trim(), "no history");
    let id = sandbox.ok(&["add", "http://127.0.0.1:1/refused", "--retries", "0"]);
    let _ = sandbox.fails(&["wait", id.trim(), "--timeout", "10"]);
    let page: Value = serde_json::from_str(&sandbox.ok(&["history", "--json"])).unwrap();
    assert_eq!(page["total"], 1, "{page}");
    assert!(sandbox.ok(&["history", "--clear"]).contains("cleared"));
    assert_eq!(sandbox.ok(&["history"]).trim(), "no history");
}
