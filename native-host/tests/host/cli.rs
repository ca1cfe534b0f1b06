//! The command-line faces.

use serde_json::Value;

use crate::support::{FileServer, sandbox};

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

/// The downloads `sdm ls --json` lists, in its order.
fn listed(sandbox: &crate::support::Sandbox) -> Vec<Value> {
    match serde_json::from_str(&sandbox.ok(&["ls", "--json"])).unwrap() {
        Value::Array(items) => items,
        other => panic!("ls --json gave {other}"),
    }
}

/// The field `key` of download `id` as `sdm ls --json` shows it.
fn field(sandbox: &crate::support::Sandbox, id: &str, key: &str) -> Value {
    listed(sandbox)
        .into_iter()
        .find(|d| d["id"].as_u64() == id.parse().ok())
        .unwrap_or_else(|| panic!("download {id} is not listed"))[key]
        .clone()
}

/// Poll `sdm ls --json` (every 50 ms, up to 20 s) until `pred` holds for download `id`.
fn wait_listed(
    sandbox: &crate::support::Sandbox,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) {
    for _ in 0..400 {
        if listed(sandbox)
            .iter()
            .any(|d| d["id"].as_u64() == id.parse().ok() && pred(d))
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("download {id} never reached {what}: {:?}", listed(sandbox));
}

/// A runtime for `sdm_tests::TestServer`, which serves from its tasks while the test drives the CLI.
fn test_server() -> (tokio::runtime::Runtime, sdm_tests::TestServer) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(sdm_tests::TestServer::start());
    (rt, server)
}

#[test]
fn limit_move_pause_all_resume_all_and_clear_act_on_the_queue() {
    const MIB: u64 = 1024 * 1024;
    let (_rt, server) = test_server();
    let files: Vec<_> = (0..2)
        .map(|i| {
            server.serve(
                &format!("/slow{i}.bin"),
                sdm_tests::FileSpec::new(8 * MIB)
                    .seed(300 + i)
                    .rate(MIB / 4),
            )
        })
        .collect();
    let sandbox = sandbox();
    sandbox.ok(&["settings", "--set", "max_concurrent=1"]);
    let first = sandbox.ok(&["add", files[0].url()]).trim().to_string();
    let second = sandbox.ok(&["add", files[1].url()]).trim().to_string();
    wait_listed(&sandbox, &first, "downloading", |d| {
        d["status"] == "downloading"
    });

    let said = sandbox.ok(&["limit", &first, "64K"]);
    assert!(said.contains(&first), "{said}");
    assert_eq!(field(&sandbox, &first, "bandwidth_limit"), 64 * 1024);
    let err = sandbox.fails(&["limit", &first, "fast"]);
    assert!(err.contains("byte count"), "{err}");
    let table = sandbox.ok(&["ls"]);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("ETA")),
        "{table}"
    );

    assert_eq!(listed(&sandbox)[0]["id"].to_string(), first);
    sandbox.ok(&["move", &second, "top"]);
    let order: Vec<String> = listed(&sandbox)
        .iter()
        .map(|d| d["id"].to_string())
        .collect();
    assert_eq!(order, [second.clone(), first.clone()]);
    let err = sandbox.fails(&["move", &second, "sideways"]);
    assert!(err.contains("top"), "{err}");

    assert_eq!(sandbox.ok(&["pause", "--all"]).trim(), "paused 2");
    for id in [&first, &second] {
        assert_eq!(field(&sandbox, id, "status"), "paused");
    }
    let err = sandbox.fails(&["pause"]);
    assert!(err.contains("--all"), "{err}");
    assert_eq!(sandbox.ok(&["resume", "--all"]).trim(), "resumed 2");
    // Moved to the top, the second download is the one that starts.
    wait_listed(&sandbox, &second, "downloading", |d| {
        d["status"] == "downloading"
    });
    assert_eq!(field(&sandbox, &first, "status"), "queued");

    for id in [&first, &second] {
        sandbox.ok(&["cancel", id]);
    }
    // A cancelled download leaves the list once its transfer has stopped.
    for _ in 0..200 {
        sandbox.ok(&["clear"]);
        if listed(&sandbox).is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(listed(&sandbox).is_empty(), "{:?}", listed(&sandbox));
    let history: Value = serde_json::from_str(&sandbox.ok(&["history", "--json"])).unwrap();
    assert_eq!(history["total"], 2, "{history}");
}

#[test]
fn set_url_keeps_the_bytes_of_the_same_file_and_refuses_another() {
    const MIB: u64 = 1024 * 1024;
    let (_rt, server) = test_server();
    let spec = sdm_tests::FileSpec::new(4 * MIB).seed(310).etag().rate(MIB);
    let old = server.serve("/expired.bin", spec.clone());
    let sandbox = sandbox();
    let id = sandbox.ok(&["add", old.url()]).trim().to_string();
    wait_listed(&sandbox, &id, "1 MiB down", |d| {
        d["downloaded"].as_u64() >= Some(MIB)
    });
    sandbox.ok(&["pause", &id]);
    wait_listed(&sandbox, &id, "paused", |d| d["status"] == "paused");

    let other = server.serve(
        "/other.bin",
        sdm_tests::FileSpec::new(4 * MIB).seed(311).etag(),
    );
    let err = sandbox.fails(&["set-url", &id, other.url()]);
    assert!(err.contains("conflict"), "{err}");
    let err = sandbox.fails(&["set-url", &id, "ftp://example.com/x"]);
    assert!(err.contains("http or https"), "{err}");

    let new = server.serve("/fresh.bin", spec);
    let said = sandbox.ok(&["set-url", &id, new.url()]);
    assert!(said.contains(&id), "{said}");
    assert_eq!(field(&sandbox, &id, "url"), new.url());
    sandbox.ok(&["resume", &id]);
    let path = sandbox.ok(&["wait", &id, "--timeout", "30"]);
    assert_eq!(std::fs::read(path.trim()).unwrap(), new.bytes());
    let from_zero: Vec<_> = new
        .gets()
        .into_iter()
        .filter(|r| !r.is_look() && r.range_start().is_none_or(|s| s == 0))
        .collect();
    assert!(
        from_zero.is_empty(),
        "the new address was asked from byte 0: {from_zero:?}"
    );
}
