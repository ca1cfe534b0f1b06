//! `sdm install` / `status` / `stop` / `uninstall` in a temporary HOME, and the version handshake.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sdm_tests::{FileSpec, ServedFile, TestServer, sha256_file};
use serde_json::{Value, json};

use crate::support::{Guard, STEP, Sandbox, is_sdm_service, sandbox};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A copy of the binary under test in a folder of its own (which the caller may delete, as `cargo clean` would),
/// and a sandbox that runs that copy. The sandbox's `XDG_BIN_HOME` is cleared, so `install` copies into its HOME.
fn sandbox_on_a_copy() -> (tempfile::TempDir, PathBuf, Sandbox) {
    let build = tempfile::tempdir().unwrap();
    let copy = build.path().join("sdm");
    std::fs::copy(env!("CARGO_BIN_EXE_sdm"), &copy).unwrap();
    let mut sandbox = Sandbox::with_binary(&copy);
    sandbox.env("XDG_BIN_HOME", "");
    (build, copy, sandbox)
}

/// A sandbox running `bin` in `other`'s HOME and data folder (its own folders go unused).
fn same_home_other_binary(other: &Sandbox, bin: &Path) -> Sandbox {
    let mut sandbox = Sandbox::with_binary(bin);
    sandbox.env("HOME", &other.home().display().to_string());
    sandbox.env("SDM_HOME", &other.data().display().to_string());
    sandbox.env("XDG_DOWNLOAD_DIR", &other.downloads().display().to_string());
    sandbox
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The manifest folders, relative to HOME, of every browser SDM knows, and whether it is Firefox-family.
const BROWSERS: [(&str, &str, bool); 9] = [
    (
        "chrome",
        ".config/google-chrome/NativeMessagingHosts",
        false,
    ),
    ("chromium", ".config/chromium/NativeMessagingHosts", false),
    (
        "brave",
        ".config/BraveSoftware/Brave-Browser/NativeMessagingHosts",
        false,
    ),
    ("edge", ".config/microsoft-edge/NativeMessagingHosts", false),
    ("vivaldi", ".config/vivaldi/NativeMessagingHosts", false),
    ("firefox", ".mozilla/native-messaging-hosts", true),
    ("librewolf", ".librewolf/native-messaging-hosts", true),
    (
        "snap-chromium",
        "snap/chromium/common/chromium/NativeMessagingHosts",
        false,
    ),
    (
        "snap-firefox",
        "snap/firefox/common/.mozilla/native-messaging-hosts",
        true,
    ),
];

#[test]
fn install_copies_the_binary_and_registers_it_with_every_browser_found() {
    let (_build, copy, sandbox) = sandbox_on_a_copy();
    let home = sandbox.home();
    // Browsers that have run: their own folder exists. Brave, Edge and Vivaldi have not; a Flatpak Firefox has.
    let found = [
        "chrome",
        "chromium",
        "firefox",
        "librewolf",
        "snap-chromium",
        "snap-firefox",
    ];
    for (name, dir, _) in BROWSERS {
        if found.contains(&name) {
            std::fs::create_dir_all(home.join(dir).parent().unwrap()).unwrap();
        }
    }
    std::fs::create_dir_all(home.join(".var/app/org.mozilla.firefox")).unwrap();

    let out = sandbox.ok(&["install"]);
    let installed = home.join(".local/bin/sdm");
    assert!(
        out.contains(&format!("installed {}", installed.display())),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&copy).unwrap()
    );
    for (name, dir, firefox) in BROWSERS {
        let file = home.join(dir).join("com.sdm.host.json");
        if !found.contains(&name) {
            assert!(
                !file.exists(),
                "{name} has not run here: {}",
                file.display()
            );
            assert!(!out.contains(&format!("{name}:")), "{out}");
            continue;
        }
        assert!(out.contains(&format!("{name}: registered")), "{out}");
        let manifest = read_json(&file);
        assert_eq!(manifest["name"], "com.sdm.host");
        assert_eq!(manifest["type"], "stdio");
        assert_eq!(manifest["path"], installed.display().to_string(), "{name}");
        if firefox {
            assert_eq!(manifest["allowed_extensions"], json!([protocol::GECKO_ID]));
            assert!(manifest.get("allowed_origins").is_none());
        } else {
            let origins = manifest["allowed_origins"].as_array().unwrap();
            assert_eq!(
                origins[0],
                format!("chrome-extension://{}/", protocol::EXTENSION_ID)
            );
            assert!(manifest.get("allowed_extensions").is_none());
        }
    }
    assert!(
        out.contains("flatpak org.mozilla.firefox: not registered"),
        "{out}"
    );

    // Again: nothing to do, and it says so.
    let again = sandbox.ok(&["install"]);
    assert!(again.contains("is up to date"), "{again}");
    assert!(again.contains("chrome: already registered"), "{again}");
    assert!(!again.contains(": registered"), "{again}");
    // `status` finds the manifests (the service is not running: exit 3).
    let status = sandbox.run(&["status"]);
    assert_eq!(status.status.code(), Some(3));
    let status = String::from_utf8(status.stdout).unwrap();
    assert!(
        status.contains(&format!(
            "registered with: chrome, chromium, firefox, librewolf, snap-chromium, snap-firefox ({})",
            installed.display()
        )),
        "{status}"
    );
    // A manifest naming another binary is pointed out.
    let chrome = home.join(BROWSERS[0].1).join("com.sdm.host.json");
    let mut other = read_json(&chrome);
    other["path"] = json!("/opt/old/sdm");
    std::fs::write(&chrome, other.to_string()).unwrap();
    let status = String::from_utf8(sandbox.run(&["status"]).stdout).unwrap();
    assert!(
        status.contains("chrome: the host manifest names /opt/old/sdm"),
        "{status}"
    );
    sandbox.ok(&["install"]);

    // Uninstall removes every manifest and the copy; with no service running there is nothing to stop.
    let out = sandbox.ok(&["uninstall"]);
    assert!(out.contains("not running"), "{out}");
    for (name, dir, _) in BROWSERS {
        assert!(!home.join(dir).join("com.sdm.host.json").exists(), "{name}");
    }
    assert!(out.contains("snap-firefox: removed"), "{out}");
    assert!(!installed.exists());
    let again = sandbox.ok(&["uninstall"]);
    assert!(
        again.contains("no browser had an sdm host manifest"),
        "{again}"
    );
}

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

    // Registered where it is: nothing is copied.
    assert!(!sandbox.home().join(".local/bin/sdm").exists());

    let out = sandbox.ok(&["install", "--dir", &dir_arg, "--uninstall"]);
    assert!(out.contains("removed"), "{out}");
    assert!(!file.exists());
}

#[test]
fn install_finds_no_browser_and_changes_nothing() {
    let (_build, _copy, sandbox) = sandbox_on_a_copy();
    let err = sandbox.fails(&["install"]);
    assert!(
        err.contains("--browser") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(!sandbox.home().join(".local/bin/sdm").exists());
    // The crate's table is ours to use as it is: an override (which the crate would panic on if broken) is refused.
    let mut with_table = sandbox.command(&["install", "--browser", "chrome"]);
    let out = with_table
        .env("NATIVE_MESSAGING_BROWSERS_CONFIG", "/nonexistent.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unset it"),
        "{out:?}"
    );
    assert!(!sandbox.home().join(".local/bin/sdm").exists());
    let err = sandbox.fails(&["install", "--browser", "netscape"]);
    assert!(
        err.contains("unknown browser") && err.contains("snap-firefox"),
        "{err}"
    );
}

#[test]
fn install_honours_xdg_bin_home() {
    let (_build, _copy, mut sandbox) = sandbox_on_a_copy();
    let bin = sandbox.root.path().join("my-bin");
    sandbox.env("XDG_BIN_HOME", &bin.display().to_string());
    sandbox.ok(&["install", "--browser", "firefox"]);
    let manifest = read_json(
        &sandbox
            .home()
            .join(".mozilla/native-messaging-hosts/com.sdm.host.json"),
    );
    assert_eq!(manifest["path"], bin.join("sdm").display().to_string());
    assert!(bin.join("sdm").exists());
}

#[test]
fn the_registered_binary_answers_after_the_build_folder_is_gone() {
    let (build, _copy, sandbox) = sandbox_on_a_copy();
    sandbox.ok(&["install", "--browser", "chromium"]);
    let manifest_file = sandbox
        .home()
        .join(".config/chromium/NativeMessagingHosts/com.sdm.host.json");
    let registered = PathBuf::from(read_json(&manifest_file)["path"].as_str().unwrap());
    assert!(registered.starts_with(sandbox.home()), "{registered:?}");
    // `cargo clean`: the binary install ran from is gone.
    drop(build);

    // Started as Chromium starts it: the manifest's path, the caller's origin, frames on stdin and stdout.
    let host = same_home_other_binary(&sandbox, &registered);
    let mut relay = host.relay();
    let reply = relay.call(json!({"id": 1, "cmd": "ping"}));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["version"], VERSION);

    // An upgrade renames a new file over the one this relay runs: the relay is not disturbed, and the manifest
    // still names the same path. (Bytes after an ELF's end are ignored, so the longer copy is "another build".)
    let upgrade = tempfile::tempdir().unwrap();
    let newer = upgrade.path().join("sdm");
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_sdm")).unwrap();
    bytes.push(0);
    std::fs::write(&newer, &bytes).unwrap();
    std::fs::set_permissions(&newer, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut upgrader = same_home_other_binary(&sandbox, &newer);
    upgrader.env("XDG_BIN_HOME", "");
    let out = upgrader.ok(&["install", "--browser", "chromium"]);
    assert!(out.contains("installed"), "{out}");
    assert_eq!(std::fs::read(&registered).unwrap(), bytes);
    assert_eq!(
        read_json(&manifest_file)["path"],
        registered.display().to_string()
    );
    let reply = relay.call(json!({"id": 2, "cmd": "ping"}));
    assert_eq!(
        reply["ok"], true,
        "the running relay still answers: {reply}"
    );
    let mut fresh = host.relay();
    assert_eq!(fresh.call(json!({"id": 3, "cmd": "ping"}))["ok"], true);
}

#[test]
fn status_says_whether_the_service_runs_and_stop_stops_it() {
    let mut sandbox = sandbox();
    let out = sandbox.run(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));
    // Neither status nor stop starts a service.
    assert!(sandbox.ok(&["stop"]).contains("not running"));
    assert!(sandbox.service_pid().is_none());

    sandbox.start();
    let pid = sandbox.service_pid().unwrap();
    let out = sandbox.ok(&["status"]);
    assert!(
        out.contains(&format!("sdm service {VERSION} running, pid {pid}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("data folder: {}", sandbox.data().display())),
        "{out}"
    );
    assert!(out.contains("downloads: 0 in all"), "{out}");

    let out = sandbox.ok(&["stop"]);
    assert!(
        out.contains(&format!("stopped the sdm service (pid {pid})")),
        "{out}"
    );
    // `stop` returns once the service has exited.
    assert!(!is_sdm_service(pid));
    assert!(!sandbox.socket().exists());
    assert_eq!(sandbox.run(&["status"]).status.code(), Some(3));
}

/// A file served at 1 MiB/s, queued over one connection with `sdm add` (run with `env`), once some of it is on disk.
fn slow_download(
    sandbox: &Sandbox,
    server: &TestServer,
    env: &[(&str, &str)],
) -> (ServedFile, String) {
    let file = server.serve("/slow.bin", FileSpec::new(4 << 20).seed(16).rate(1 << 20));
    let mut add = sandbox.command(&["add", file.url(), "-c", "1"]);
    add.envs(env.iter().copied());
    let out = add.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .find_map(|w| w.parse::<u64>().ok())
        .expect("add prints the id")
        .to_string();
    wait_for_progress(sandbox, &id, env);
    (file, id)
}

/// Wait until the download has some bytes (`sdm ls --json`, run with `env`).
fn wait_for_progress(sandbox: &Sandbox, id: &str, env: &[(&str, &str)]) {
    let deadline = Instant::now() + STEP;
    loop {
        let mut ls = sandbox.command(&["ls", "--json"]);
        ls.envs(env.iter().copied());
        let out = ls.output().unwrap();
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let downloaded = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["id"].as_u64() == id.parse().ok())
            .and_then(|d| d["downloaded"].as_u64())
            .unwrap_or(0);
        if downloaded >= 256 * 1024 {
            return;
        }
        assert!(Instant::now() < deadline, "no progress on download {id}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The download completes exact, and its bytes after the restart came from where it had got to, not from zero.
fn assert_resumed_and_exact(sandbox: &Sandbox, file: &ServedFile, id: &str) {
    sandbox.ok(&["wait", id, "--timeout", "60"]);
    assert_eq!(
        sha256_file(sandbox.downloads().join("slow.bin")),
        file.sha256()
    );
    let resumed = file.gets().iter().any(|r| {
        r.header("range")
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.split('-').next())
            .and_then(|start| start.parse::<u64>().ok())
            .is_some_and(|start| start > 0)
    });
    assert!(resumed, "no request resumed past byte 0: {:?}", file.gets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_stopped_by_sdm_stop_resumes_at_the_next_start() {
    let server = TestServer::start().await;
    tokio::task::block_in_place(|| {
        let sandbox = sandbox();
        let (file, id) = slow_download(&sandbox, &server, &[]);
        let pid = sandbox.service_pid().unwrap();
        sandbox.ok(&["stop"]);
        assert!(!is_sdm_service(pid));
        // `wait` starts the service again, which picks the download up.
        assert_resumed_and_exact(&sandbox, &file, &id);
    });
}

#[test]
fn uninstall_purge_stops_the_service_and_deletes_the_data_folder() {
    let (_build, _copy, mut sandbox) = sandbox_on_a_copy();
    sandbox.ok(&["install", "--browser", "firefox"]);
    sandbox.start();
    let pid = sandbox.service_pid().unwrap();
    let out = sandbox.ok(&["uninstall", "--purge"]);
    assert!(
        out.contains(&format!("stopped the sdm service (pid {pid})")),
        "{out}"
    );
    assert!(!is_sdm_service(pid));
    assert!(out.contains("firefox: removed"), "{out}");
    assert!(
        out.contains(&format!(
            "removed {}",
            sandbox.home().join(".local/bin/sdm").display()
        )),
        "{out}"
    );
    // What the folder held is said before it goes.
    assert!(
        out.contains(&format!(
            "deleting the data folder {}",
            sandbox.data().display()
        )),
        "{out}"
    );
    assert!(
        out.contains("state.json") && out.contains("service.log"),
        "{out}"
    );
    assert!(!sandbox.data().exists());
    assert!(
        !sandbox
            .home()
            .join(".mozilla/native-messaging-hosts/com.sdm.host.json")
            .exists()
    );
}

/// An older service (its version overridden) with a download under way; then this binary, newer, reaches it by
/// `reach`: the old service is stopped after its checkpoint, this one starts, and the download goes on.
async fn a_newer_binary_replaces_an_older_service(reach: impl FnOnce(&Sandbox)) {
    let server = TestServer::start().await;
    tokio::task::block_in_place(|| {
        let sandbox = sandbox();
        let old = [("SDM_TEST_VERSION", "0.0.1")];
        std::fs::create_dir_all(sandbox.data()).unwrap();
        let mut serve = sandbox.command(&["serve"]);
        serve
            .envs(old)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut old_service = Guard(serve.spawn().unwrap());
        sandbox.wait_until_serving(Some(&mut old_service.0));
        let (file, id) = slow_download(&sandbox, &server, &old);
        let mut status = sandbox.command(&["status"]);
        let out = status.envs(old).output().unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("sdm service 0.0.1 running"),
            "{out:?}"
        );

        reach(&sandbox);
        // Gone by the time the newer binary answered, and cleanly.
        let status = old_service.0.try_wait().unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "the old service is still running, or failed: {status:?}"
        );
        let out = sandbox.ok(&["status"]);
        assert!(
            out.contains(&format!("sdm service {VERSION} running")),
            "{out}"
        );
        assert_resumed_and_exact(&sandbox, &file, &id);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_relay_replaces_an_older_service_and_downloads_go_on() {
    a_newer_binary_replaces_an_older_service(|sandbox| {
        let mut relay = sandbox.relay();
        let reply = relay.call(json!({"id": 1, "cmd": "ping"}));
        assert_eq!(reply["result"]["version"], VERSION, "{reply}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_cli_replaces_an_older_service_and_downloads_go_on() {
    a_newer_binary_replaces_an_older_service(|sandbox| {
        sandbox.ok(&["ls"]);
    })
    .await;
}

#[test]
fn an_older_binary_leaves_a_newer_service_alone() {
    let mut sandbox = sandbox();
    sandbox.start();
    let pid = sandbox.service_pid().unwrap();
    let mut ls = sandbox.command(&["ls"]);
    let out = ls.env("SDM_TEST_VERSION", "0.0.1").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sandbox.service_pid(), Some(pid));
}
