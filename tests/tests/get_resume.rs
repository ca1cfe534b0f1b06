//! `sdm get` (the real binary) that does not finish keeps its bytes: interrupted by a signal, or failed on the
//! network, it leaves its part file and a control file beside it, and the same command run again goes on from there
//! and ends in the exact file under its own name. A control file is data from disk: one that names a path elsewhere,
//! or a link planted at a control file's name, never leads a byte outside the download folder.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use sdm_tests::harness::{STEP, Sandbox, wait_output};
use sdm_tests::{FileSpec, TestServer};

use crate::support::{assert_exact, bounded, names_in, until};

const MIB: u64 = 1024 * 1024;

/// `sdm get` with `args` in the sandbox, to its end.
fn get(sdm: &Sandbox, args: &[&str]) -> Output {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    tokio::task::block_in_place(|| sdm.run(&all))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Start `sdm get ARGS`, wait until the server has sent `bytes` of `file`, send `signal` (`INT`, `TERM`), and
/// return how it ended.
async fn interrupted_get(
    sdm: &Sandbox,
    args: &[&str],
    file: &sdm_tests::ServedFile,
    bytes: u64,
    signal: &str,
) -> Output {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    let child = sdm
        .command(&all)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sdm get");
    until(STEP.as_secs(), "bytes to flow", || {
        file.bytes_sent() >= bytes
    })
    .await;
    let killed = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    tokio::task::block_in_place(|| wait_output(child, STEP))
}

/// The download a control file keeps: bytes written, from its plan's segments.
fn kept_bytes(control: &Path) -> u64 {
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(control).unwrap()).unwrap();
    let plan = &c["plan"];
    let left: u64 = (plan["segments"].as_array().unwrap().iter())
        .map(|s| s["end"].as_u64().unwrap() - s["pos"].as_u64().unwrap())
        .sum();
    plan["total"].as_u64().unwrap() - left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_get_goes_on_where_it_stopped() {
    bounded(90, async {
        let server = TestServer::start().await;
        let sdm = Sandbox::new();
        let downloads = sdm.downloads();
        let out = downloads.to_string_lossy().into_owned();
        let named = downloads.join("mine.bin").to_string_lossy().into_owned();
        // Into the folder under the server's name, stopped by SIGINT (Ctrl-C); to a path of the user's, by SIGTERM.
        for (path, output, landed, signal, code) in [
            ("/r.bin", out.as_str(), "r.bin", "INT", 130),
            ("/t.bin", named.as_str(), "mine.bin", "TERM", 143),
        ] {
            let file = server.serve(path, FileSpec::new(6 * MIB).seed(301).rate(MIB));
            let args = ["-o", output, "-c", "2", file.url()];
            let first = interrupted_get(&sdm, &args, &file, 2 * MIB, signal).await;
            assert_eq!(first.status.code(), Some(code), "{}", stderr(&first));
            assert!(
                stderr(&first).contains("run the same command again"),
                "{}",
                stderr(&first)
            );
            let (part, control) = (format!("{landed}.part"), format!("{landed}.sdm"));
            assert_eq!(names_in(&downloads), [part.as_str(), control.as_str()]);
            let kept = kept_bytes(&downloads.join(&control));
            assert!(kept >= MIB, "only {kept} bytes kept after 2 MiB were sent");

            let sent = file.bytes_sent();
            let second = get(&sdm, &args);
            assert!(second.status.success(), "{}", stderr(&second));
            assert_exact(&downloads.join(landed), &file);
            assert_eq!(names_in(&downloads), [landed]);
            let again = file.bytes_sent() - sent;
            assert!(
                again <= file.len() - kept + MIB / 4,
                "the second run fetched {again} bytes of {} with {kept} kept",
                file.len()
            );
            std::fs::remove_file(downloads.join(landed)).unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_that_fails_on_the_network_keeps_its_bytes_for_the_next_run() {
    bounded(60, async {
        let server = TestServer::start().await;
        // Every body is cut after 1 MiB, the first three times: with no retries the first run fails part way.
        let file = server.serve(
            "/cut.bin",
            FileSpec::new(4 * MIB).seed(302).cut_after(MIB, 3),
        );
        let sdm = Sandbox::new();
        let downloads = sdm.downloads();
        let out = downloads.to_string_lossy().into_owned();
        let args = ["-o", out.as_str(), "-c", "1", "--retries", "0", file.url()];
        let first = get(&sdm, &args);
        assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
        assert!(
            stderr(&first).contains("kept in") && stderr(&first).contains("download failed"),
            "{}",
            stderr(&first)
        );
        assert_eq!(names_in(&downloads), ["cut.bin.part", "cut.bin.sdm"]);
        assert!(kept_bytes(&downloads.join("cut.bin.sdm")) > 0);
        // Each run goes on from the last one's bytes, so the cuts run out and the file completes.
        let mut runs = 1;
        loop {
            let next = get(&sdm, &args);
            runs += 1;
            if next.status.success() {
                break;
            }
            assert!(runs < 5, "still failing: {}", stderr(&next));
        }
        assert_exact(&downloads.join("cut.bin"), &file);
        assert_eq!(names_in(&downloads), ["cut.bin"]);
    })
    .await;
}

/// A control file's stored path is not where its bytes go (the file it sits beside is), and a link at a control
/// file's name is not read: nothing appears or changes outside the download folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_file_never_leads_a_write_outside_its_folder() {
    bounded(90, async {
        let server = TestServer::start().await;
        let sdm = Sandbox::new();
        let downloads = sdm.downloads();
        let outside = sdm.root.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let out = downloads.to_string_lossy().into_owned();

        let file = server.serve("/p.bin", FileSpec::new(6 * MIB).seed(303).rate(MIB));
        let args = ["-o", out.as_str(), "-c", "2", file.url()];
        let first = interrupted_get(&sdm, &args, &file, 2 * MIB, "INT").await;
        assert_eq!(first.status.code(), Some(130), "{}", stderr(&first));
        let control = downloads.join("p.bin.sdm");
        let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&control).unwrap()).unwrap();
        c["plan"]["path"] = outside.join("p.bin").to_string_lossy().into_owned().into();
        std::fs::write(&control, serde_json::to_vec(&c).unwrap()).unwrap();
        let second = get(&sdm, &args);
        assert!(second.status.success(), "{}", stderr(&second));
        assert_exact(&downloads.join("p.bin"), &file);
        assert_eq!(names_in(&downloads), ["p.bin"]);
        assert!(names_in(&outside).is_empty(), "{:?}", names_in(&outside));

        // A link at the name a control file would have, to a control file outside: not followed, not read.
        let other = server.serve("/q.bin", FileSpec::new(2 * MIB).seed(304));
        let planted = outside.join("planted.sdm");
        let fake = serde_json::json!({"sdm_get": 1, "url": other.url(), "plan": {
            "final_url": other.url(), "total": 2 * MIB, "ranges": true, "etag": null, "last_modified": null,
            "path": "q.bin", "segments": [{"start": 0, "pos": MIB, "end": 2 * MIB}]}});
        std::fs::write(&planted, serde_json::to_vec(&fake).unwrap()).unwrap();
        std::os::unix::fs::symlink(&planted, downloads.join("q.bin.sdm")).unwrap();
        // With a part file beside it, as a real one has: followed, it would resume into that (empty) file.
        std::fs::write(downloads.join("q.bin.part"), b"").unwrap();
        let third = get(&sdm, &["-o", out.as_str(), other.url()]);
        assert!(third.status.success(), "{}", stderr(&third));
        assert_exact(&downloads.join("q (1).bin"), &other);
        assert_eq!(
            std::fs::read_link(downloads.join("q.bin.sdm")).unwrap(),
            planted
        );
        assert_eq!(names_in(&outside), ["planted.sdm"]);
    })
    .await;
}
