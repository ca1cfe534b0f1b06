//! Issue 15, files: no link planted in the download folder or in `$SDM_HOME` redirects a byte or hangs a download,
//! a data folder of another user's (or one anyone may write to) is refused before anything in it is opened, and a
//! requested name obeys the rule a server's name does (no leading dot, no invisible characters, no device name).
//!
//! Each test is bounded: on code that checks a name with `exists()` before creating it, a dangling link makes the
//! choice of a name loop forever, so a hang is a failure here.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use protocol::{AddRequest, ErrorCode, Status};
use sdm_tests::harness::{STEP, Sandbox, wait_output};
use sdm_tests::{FileSpec, TestServer};
use serde_json::json;

use crate::fault_support::{Connect, add_file, give_away, wait_info};
use crate::support::{
    add, assert_exact, bounded, complete_exact, connections_closed, names_in, until,
    wait_downloaded, wait_for, wait_status, with_engine,
};

const MIB: u64 = 1024 * 1024;

/// `sdm get URL -o OUT` in the sandbox (bounded by the harness's step); its success and stderr.
fn sdm_get(sdm: &Sandbox, url: &str, out: &Path) -> (bool, String) {
    let out = out.to_string_lossy();
    let output = tokio::task::block_in_place(|| sdm.run(&["get", url, "-o", &out, "-c", "4"]));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A folder beside the sandbox's download folder, where links lead: nothing may appear or change in it.
fn outside(sdm: &Sandbox) -> PathBuf {
    let dir = sdm.root.path().join("outside");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The file at `path` still holds exactly `expected` (a failure says how long it grew, not what it holds).
fn assert_unchanged(path: &Path, expected: &[u8]) {
    let now = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        now == expected,
        "{} was written through a link: {} bytes now, {} before",
        path.display(),
        now.len(),
        expected.len()
    );
}

/// The repro 2: a dangling link at `f.bin.part`, then `sdm get .../f.bin -o Downloads/`. It used to loop
/// forever (`exists()` says a dangling link is absent, the exclusive create says it is there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dangling_link_at_the_part_name_is_skipped_not_followed() {
    bounded(60, async {
        let server = TestServer::start().await;
        let file = server.serve("/f.bin", FileSpec::new(MIB).seed(230));
        let sdm = Sandbox::new();
        let (downloads, outside) = (sdm.downloads(), outside(&sdm));
        let target = outside.join("f.bin.part");
        symlink(&target, downloads.join("f.bin.part")).unwrap();

        let (ok, err) = sdm_get(&sdm, file.url(), &downloads);

        assert!(ok, "sdm get failed: {err}");
        assert_exact(&downloads.join("f (1).bin"), &file);
        assert_eq!(names_in(&downloads), ["f (1).bin", "f.bin.part"]);
        assert_eq!(
            std::fs::read_link(downloads.join("f.bin.part")).unwrap(),
            target
        );
        assert!(names_in(&outside).is_empty(), "{:?}", names_in(&outside));
    })
    .await;
}

/// A link at the final name, dangling or to a file outside, there before the download or put there while it runs:
/// the download takes the next name; the link stays as it was and nothing is written where it leads. (Where hard
/// links work, the old code's `link(2)` refused the name too; its check-then-rename ran only where they do not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_at_the_final_name_is_neither_followed_nor_replaced() {
    bounded(90, async {
        let server = TestServer::start().await;
        let a = server.serve("/a.bin", FileSpec::new(MIB).seed(231));
        let b = server.serve("/b.bin", FileSpec::new(MIB).seed(232));
        let c = server.serve("/c.bin", FileSpec::new(2 * MIB).seed(233).rate(2 * MIB));
        let sdm = Sandbox::new();
        let (downloads, outside) = (sdm.downloads(), outside(&sdm));
        let victim = outside.join("victim.bin");
        std::fs::write(&victim, b"the user's own file").unwrap();
        symlink(outside.join("missing.bin"), downloads.join("a.bin")).unwrap();
        symlink(&victim, downloads.join("b.bin")).unwrap();

        for (file, landed) in [(&a, "a (1).bin"), (&b, "b (1).bin")] {
            let (ok, err) = sdm_get(&sdm, file.url(), &downloads);
            assert!(ok, "sdm get {} failed: {err}", file.url());
            assert_exact(&downloads.join(landed), file);
        }

        // The same link, put at the final name once the part file is there.
        let out = downloads.to_string_lossy().into_owned();
        let child = sdm
            .command(&["get", c.url(), "-o", &out, "-c", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sdm get");
        until(STEP.as_secs(), "c.bin.part to appear", || {
            downloads.join("c.bin.part").exists()
        })
        .await;
        symlink(outside.join("missing-c.bin"), downloads.join("c.bin")).unwrap();
        let output = tokio::task::block_in_place(|| wait_output(child, STEP));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_exact(&downloads.join("c (1).bin"), &c);

        for (link, target) in [
            ("a.bin", outside.join("missing.bin")),
            ("b.bin", victim.clone()),
            ("c.bin", outside.join("missing-c.bin")),
        ] {
            assert_eq!(std::fs::read_link(downloads.join(link)).unwrap(), target);
        }
        assert_unchanged(&victim, b"the user's own file");
        assert_eq!(names_in(&outside), ["victim.bin"]);
        assert_eq!(
            names_in(&downloads),
            [
                "a (1).bin",
                "a.bin",
                "b (1).bin",
                "b.bin",
                "c (1).bin",
                "c.bin"
            ]
        );
    })
    .await;
}

/// A link swapped in for the `.part` file while the download runs never becomes the download: the name no longer
/// holds the file that was written, so nothing is moved to the final name (the old code hard-linked the link there,
/// and the "finished" file led outside the folder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_swapped_in_for_the_part_file_is_never_placed() {
    bounded(60, async {
        let server = TestServer::start().await;
        let file = server.serve("/swap.bin", FileSpec::new(2 * MIB).seed(236).rate(MIB));
        let sdm = Sandbox::new();
        let (downloads, outside) = (sdm.downloads(), outside(&sdm));
        let victim = outside.join("victim");
        std::fs::write(&victim, b"the user's own file").unwrap();

        let out = downloads.to_string_lossy().into_owned();
        let child = sdm
            .command(&["get", file.url(), "-o", &out, "-c", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sdm get");
        let part = downloads.join("swap.bin.part");
        // Sized or written: the transfer has the file open, so what is swapped in now is not the file it writes.
        until(STEP.as_secs(), "bytes to flow into swap.bin.part", || {
            file.bytes_sent() > 0 && std::fs::symlink_metadata(&part).is_ok_and(|m| m.len() > 0)
        })
        .await;
        std::fs::remove_file(&part).unwrap();
        symlink(&victim, &part).unwrap();
        let output = tokio::task::block_in_place(|| wait_output(child, STEP));

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "sdm get succeeded: {stderr}");
        assert!(stderr.contains("replaced"), "{stderr}");
        assert!(
            std::fs::symlink_metadata(downloads.join("swap.bin")).is_err(),
            "something was placed at swap.bin"
        );
        assert_unchanged(&victim, b"the user's own file");
        assert_eq!(names_in(&outside), ["victim"]);
    })
    .await;
}

/// A link put at the `.part` file of a paused download is not followed at resume: the download starts over in a
/// file of its own, and the file the link leads to is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_put_at_a_paused_downloads_part_file_is_not_followed_at_resume() {
    with_engine(60, async |root, engine| {
        let server = TestServer::start().await;
        let file = server.serve(
            "/paused.bin",
            FileSpec::new(4 * MIB).seed(234).rate(2 * MIB),
        );
        let id = add(engine, &file, Some(2)).await;
        wait_downloaded(engine, id, 256 * 1024).await;
        engine.pause(id).expect("pause is accepted");
        let paused = wait_status(engine, id, Status::Paused).await;
        connections_closed(&file, "the paused download's").await;

        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let victim = outside.join("victim");
        std::fs::write(&victim, b"not to be written").unwrap();
        let part = sdm::engine::filename::part_path(Path::new(&paused.path));
        assert!(part.is_file(), "no part file at {}", part.display());
        std::fs::remove_file(&part).unwrap();
        symlink(&victim, &part).unwrap();

        engine.resume(id).expect("resume is accepted");
        let done = wait_for(engine, id, "finished", |d| d.status.is_finished()).await;

        assert_unchanged(&victim, b"not to be written");
        assert_eq!(names_in(&outside), ["victim"]);
        match done.status {
            Status::Completed => {
                let path = Path::new(&done.path);
                assert!(
                    std::fs::symlink_metadata(path).unwrap().is_file(),
                    "{} is not a regular file",
                    path.display()
                );
                assert_eq!(path.parent(), Some(root.path().join("downloads").as_path()));
                assert_exact(path, &file);
            }
            _ => assert!(
                done.error.as_deref().is_some_and(|e| e.contains("link")),
                "failed without saying why: {done:?}"
            ),
        }
    })
    .await;
}

/// A requested name with a leading dot lands without it (`.bashrc` as `bashrc`), as a server's name does; one with
/// invisible or direction-changing characters, or a device name, is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_names_follow_the_name_rule() {
    with_engine(60, async |root, engine| {
        let server = TestServer::start().await;
        let file = server.serve("/named.bin", FileSpec::new(MIB).seed(235));
        let downloads = root.path().join("downloads");
        let add_named = |name: &str| {
            engine.add(AddRequest {
                url: file.url().to_string(),
                filename: Some(name.to_string()),
                ..AddRequest::default()
            })
        };
        for (name, landed) in [(".bashrc", "bashrc"), ("..profile", "profile")] {
            let id = add_named(name).await.expect("add is accepted").id;
            let info = complete_exact(engine, id, &file).await;
            assert_eq!(Path::new(&info.path), downloads.join(landed), "{name:?}");
            assert_eq!(info.filename, landed);
        }
        for (name, why) in [
            ("invoice\u{202E}fdp.exe", "invisible"),
            ("a\u{200B}b.txt", "invisible"),
            ("\u{FEFF}x.txt", "invisible"),
            ("\u{2066}y\u{2069}.txt", "invisible"),
            ("CON", "reserved"),
            ("com1.txt", "reserved"),
            ("Lpt9.tar.gz", "reserved"),
        ] {
            let err = add_named(name).await.expect_err(name);
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{name:?}: {err:?}");
            assert!(err.message.contains(why), "{name:?}: {}", err.message);
        }
        assert_eq!(names_in(&downloads), ["bashrc", "profile"]);
    })
    .await;
}

/// Links at `relay.log` and `service.lock` in `$SDM_HOME` are not followed: the relay logs elsewhere rather than
/// append to what the link leads to, and `sdm serve` refuses to start rather than truncate it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_at_relay_log_and_service_lock_are_not_followed() {
    bounded(90, async {
        let keep = b"keep this".as_slice();

        let sdm = Sandbox::new();
        std::fs::create_dir_all(sdm.data()).unwrap();
        let victim = outside(&sdm).join("relay-victim");
        std::fs::write(&victim, keep).unwrap();
        symlink(&victim, sdm.data().join("relay.log")).unwrap();
        tokio::task::block_in_place(|| {
            let mut relay = sdm.relay();
            let reply = relay.call(json!({"id": 1, "cmd": "ping"}));
            assert_eq!(reply["ok"], true, "{reply}");
        });
        assert_unchanged(&victim, keep);
        assert!(
            std::fs::symlink_metadata(sdm.data().join("relay.log"))
                .unwrap()
                .is_symlink()
        );

        let sdm = Sandbox::new();
        std::fs::create_dir_all(sdm.data()).unwrap();
        let victim = outside(&sdm).join("lock-victim");
        std::fs::write(&victim, keep).unwrap();
        symlink(&victim, sdm.data().join("service.lock")).unwrap();
        let out = tokio::task::block_in_place(|| sdm.run(&["serve"]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "sdm serve started through a link");
        assert!(
            err.contains("service.lock") && err.contains("symbolic link"),
            "{err}"
        );
        assert_unchanged(&victim, keep);
        assert!(!sdm.socket().exists());
    })
    .await;
}

/// Links put at the service's own files in `$SDM_HOME` are never written through: a state write makes its temp
/// file anew where the link was, and history is not appended through one (the item is lost, with a warning, rather
/// than written elsewhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_at_the_state_files_are_not_written_through() {
    bounded(60, async {
        let keep = b"keep this".as_slice();
        let server = TestServer::start().await;
        let file = server.serve("/state.bin", FileSpec::new(64 * 1024).seed(238));
        let mut sdm = Sandbox::new();
        std::fs::create_dir_all(sdm.data()).unwrap();
        let outside = outside(&sdm);
        let data = sdm.data();
        let plant = |name: &str| {
            let victim = outside.join(name);
            std::fs::write(&victim, keep).unwrap();
            let at = data.join(name);
            let _ = std::fs::remove_file(&at);
            symlink(&victim, at).unwrap();
            victim
        };
        // The temp file of every state write (state.json → state.tmp).
        let mut victims = vec![plant("state.tmp")];
        let mut client = sdm.start_and_connect().await;
        // After start-up, which sets aside a history it cannot read (a link to another file included).
        victims.push(plant("history.jsonl"));
        let id = add_file(&mut client, &file, Some(1)).await;
        let d = wait_info(&mut client, id, 30, "finished", |d| d.status.is_finished()).await;
        assert_eq!(d.status, Status::Completed, "{d:?}");
        for victim in &victims {
            assert_unchanged(victim, keep);
        }
        let state = std::fs::symlink_metadata(sdm.data().join("state.json")).unwrap();
        assert!(state.is_file(), "state.json is not a file of its own");
    })
    .await;
}

/// `sdm serve` checks its data folder before it opens anything in it: one that anyone may write to, or that belongs
/// to another user, is refused with a clear error; a relay does not open its log in a folder of another user's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdm_serve_refuses_a_data_folder_open_to_others_or_of_another_user() {
    bounded(90, async {
        let sdm = Sandbox::new();
        let data = sdm.data();
        std::fs::create_dir_all(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = tokio::task::block_in_place(|| sdm.fails(&["serve"]));
        assert!(
            err.contains("anyone may write") && err.contains(&*data.to_string_lossy()),
            "{err}"
        );
        assert!(names_in(&data).is_empty(), "{:?}", names_in(&data));

        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        if !give_away(&data) {
            return;
        }
        let err = tokio::task::block_in_place(|| sdm.fails(&["serve"]));
        assert!(
            err.contains("belongs to uid 65534") && err.contains("SDM_HOME"),
            "{err}"
        );
        tokio::task::block_in_place(|| {
            let mut relay = sdm.relay();
            let reply = relay.call(json!({"id": 1, "cmd": "ping"}));
            assert_eq!(reply["ok"], false, "{reply}");
            std::thread::sleep(Duration::from_millis(100));
        });
        assert!(names_in(&data).is_empty(), "{:?}", names_in(&data));
    })
    .await;
}
