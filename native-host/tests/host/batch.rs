//! `sdm add -i` (a list of URLs in `add_many` requests that fit in frames) and `sdm wait` with no id.

use std::io::Write;
use std::process::{Output, Stdio};

use serde_json::Value;

use crate::support::{FileServer, STEP, Sandbox, sandbox};

/// Run `sdm ARGS` with `input` on its standard input, to the end.
fn run_with_stdin(sandbox: &Sandbox, args: &[&str], input: &[u8]) -> Output {
    let mut child = sandbox
        .command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Written from a thread of its own, so a child that answers before reading it all cannot block the test.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = sdm_tests::harness::wait_output(child, STEP);
    writer.join().unwrap();
    out
}

/// The ids `sdm add -i` printed, one a line.
fn ids(stdout: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| l.parse().unwrap_or_else(|_| panic!("not an id: {l:?}")))
        .collect()
}

/// How many `add_many` requests the service answered, from its log.
fn batches_logged(sandbox: &Sandbox) -> usize {
    sandbox.service_log().matches("batch added").count()
}

/// The downloads `sdm ls --json` lists. Its output is read as it comes (`Sandbox::ok` reads it only at the end, and
/// hundreds of downloads fill a pipe).
fn listed(sandbox: &Sandbox) -> Vec<Value> {
    let out = sandbox.command(&["ls", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(items) => items,
        other => panic!("ls --json gave {other}"),
    }
}

#[test]
fn add_list_queues_every_good_line_in_one_request_and_wait_waits_for_all() {
    let body = b"one of fifty\n".repeat(500);
    let server = FileServer::start(body.clone());
    let sandbox = sandbox();
    // Nothing queued: nothing to wait for.
    assert_eq!(sandbox.ok(&["wait"]).trim(), "0 completed");

    let mut list = vec!["# fifty files".to_string(), String::new()];
    for i in 0..50 {
        if list.len() == 6 {
            list.push("ftp://example.com/not-http".into());
        }
        list.push(server.url(&format!("file-{i}.bin")));
    }
    let path = sandbox.home().join("list.txt");
    std::fs::write(&path, list.join("\n") + "\n").unwrap();

    let out = sandbox.run(&["add", "-i", path.to_str().unwrap(), "-c", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a refused line fails the command");
    assert!(
        stderr.contains("line 7: ") && stderr.contains("ftp"),
        "{stderr}"
    );
    assert!(stderr.contains("1 of 51 URLs were not added"), "{stderr}");
    let added = ids(&out.stdout);
    assert_eq!(added.len(), 50, "{added:?}");
    assert!(
        added.windows(2).all(|w| w[0] < w[1]),
        "in the list's order: {added:?}"
    );
    assert_eq!(batches_logged(&sandbox), 1, "50 URLs are one request");

    let said = sandbox.ok(&["wait", "--timeout", "60"]);
    assert_eq!(said.trim(), "50 completed");
    let downloads = listed(&sandbox);
    assert_eq!(downloads.len(), 50);
    for d in &downloads {
        assert_eq!(d["status"], "completed", "{d}");
        assert_eq!(d["threads"], 2, "-c applies to every line: {d}");
        let file = d["path"].as_str().unwrap();
        assert_eq!(std::fs::read(file).unwrap(), body, "{file}");
    }
}

#[test]
fn add_list_reads_standard_input_and_wait_fails_with_a_summary() {
    let server = FileServer::start(b"fine\n".to_vec());
    let sandbox = sandbox();
    let list = format!(
        "{}\n\n# refused at once, and not retried\nhttp://127.0.0.1:1/refused.bin\n",
        server.url("fine.txt")
    );
    let out = run_with_stdin(
        &sandbox,
        &["add", "-i", "-", "--retries", "0"],
        list.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added = ids(&out.stdout);
    assert_eq!(added.len(), 2, "{added:?}");

    let out = sandbox.run(&["wait", "--timeout", "60"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed download fails the wait");
    assert!(
        stderr.contains("1 of 2 finished downloads did not complete"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{} failed", added[1])),
        "the failed one is named: {stderr}"
    );
}

#[test]
fn a_list_too_large_for_one_frame_goes_in_several_requests() {
    // A server that never answers: the one download allowed to run waits, the rest stay queued, so the test does not
    // wait for 400 downloads.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let sandbox = sandbox();
    sandbox.ok(&["settings", "--set", "max_concurrent=1"]);
    let padding = "p".repeat(3000);
    let urls: Vec<String> = (0..400)
        .map(|i| format!("http://127.0.0.1:{port}/{padding}/{i}.bin"))
        .collect();
    let list = urls.join("\n");
    assert!(
        list.len() > protocol::MAX_OUTGOING_FRAME,
        "the test needs a list over one frame"
    );

    let out = run_with_stdin(&sandbox, &["add", "--input-file", "-"], list.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added = ids(&out.stdout);
    assert_eq!(added.len(), 400);
    assert!(added.windows(2).all(|w| w[0] < w[1]), "in the list's order");
    assert!(batches_logged(&sandbox) >= 2, "{}", sandbox.service_log());
    let downloads = listed(&sandbox);
    let by_id: std::collections::HashMap<u64, &str> = downloads
        .iter()
        .map(|d| (d["id"].as_u64().unwrap(), d["url"].as_str().unwrap()))
        .collect();
    for (id, url) in added.iter().zip(&urls) {
        assert_eq!(by_id.get(id).copied(), Some(url.as_str()), "download {id}");
    }

    // Nothing ends while the server is silent; paused downloads are not waited for.
    let err = sandbox.fails(&["wait", "--timeout", "1"]);
    assert!(
        err.contains("400 downloads are still queued or downloading after 1s"),
        "{err}"
    );
    assert!(sandbox.ok(&["pause", "--all"]).contains("400"));
    assert_eq!(
        sandbox.ok(&["wait"]).trim(),
        "0 completed, 400 paused (not waited for)"
    );
    drop(silent);
}
