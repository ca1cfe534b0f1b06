//! The download folder on a full disk, deleted, or read-only, through the real service. A full disk pauses the
//! download with a "disk full" error and it completes once space is freed; the service and its state survive.
//!
//! The folders are small tmpfs mounts; a machine where `mount` is not allowed (not root, no CAP_SYS_ADMIN) skips
//! those cases and says why on stderr.

use std::path::{Path, PathBuf};
use std::process::Command;

use protocol::{Command as Cmd, Status};
use sdm_tests::harness::Sandbox;
use sdm_tests::{FileSpec, TestServer};

use crate::fault_support::{Connect, add_file, info, try_set_download_dir, wait_info};
use crate::support::{assert_exact, bounded};

const MIB: u64 = 1024 * 1024;

/// A tmpfs mounted at a folder, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a tmpfs with `options` at `dir`, or say why not.
    fn mount(dir: &Path, options: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// [`mount`](Self::mount), or say on stderr that `test` is skipped, and why.
    fn mount_or_skip(dir: &Path, options: &str, test: &str) -> Option<Tmpfs> {
        Tmpfs::mount(dir, options)
            .inspect_err(|why| eprintln!("SKIPPED {test}: {why}"))
            .ok()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// [`try_set_download_dir`], which must succeed.
async fn set_download_dir(client: &mut sdm::client::Client, dir: &Path) {
    try_set_download_dir(client, dir)
        .await
        .expect("set the download folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_the_download_which_completes_once_space_is_freed() {
    bounded(90, async {
        let mut sdm = Sandbox::new();
        let dir = sdm.root.path().join("small");
        let Some(_tmpfs) = Tmpfs::mount_or_skip(
            &dir,
            "size=8m,mode=0700",
            "a_full_disk_pauses_the_download...",
        ) else {
            return;
        };
        // 5 MiB of the 8 are taken: a 6 MiB download cannot fit until the filler goes.
        let filler = dir.join("filler");
        std::fs::write(&filler, vec![7u8; 5 * MIB as usize]).unwrap();
        let server = TestServer::start().await;
        let file = server.serve("/big.bin", FileSpec::new(6 * MIB).seed(170).etag());
        let mut client = sdm.start_and_connect().await;
        set_download_dir(&mut client, &dir).await;
        let id = add_file(&mut client, &file, Some(4)).await;

        let paused = wait_info(&mut client, id, 30, "paused", |d| {
            d.status != Status::Queued && d.status != Status::Downloading
        })
        .await;
        assert_eq!(paused.status, Status::Paused, "{paused:?}");
        let error = paused.error.clone().unwrap_or_default();
        assert!(error.contains("disk full"), "{error:?}");
        assert!(
            !Path::new(&paused.path).exists(),
            "a file at the final path of a paused download"
        );

        // The service survived, and so did its state: a restart still knows the paused download.
        let _: protocol::PingResult = client.call(Cmd::Ping).await.expect("ping");
        tokio::task::block_in_place(|| sdm.stop());
        let mut client = sdm.start_and_connect().await;
        assert_eq!(info(&mut client, id).await.status, Status::Paused);

        std::fs::remove_file(&filler).unwrap();
        let _: serde_json::Value = client
            .call(Cmd::Resume { download_id: id })
            .await
            .expect("resume");
        let done = wait_info(&mut client, id, 30, "finished", |d| d.status.is_finished()).await;
        assert_eq!(done.status, Status::Completed, "{done:?}");
        assert_exact(Path::new(&done.path), &file);
        assert!(done.error.is_none(), "{done:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_download_folder_is_created_again() {
    bounded(60, async {
        let mut sdm = Sandbox::new();
        let dir = sdm.root.path().join("gone");
        std::fs::create_dir_all(&dir).unwrap();
        let server = TestServer::start().await;
        let file = server.serve("/a.bin", FileSpec::new(2 * MIB).seed(171));
        let mut client = sdm.start_and_connect().await;
        set_download_dir(&mut client, &dir).await;
        std::fs::remove_dir_all(&dir).unwrap();
        let id = add_file(&mut client, &file, None).await;
        let done = wait_info(&mut client, id, 30, "finished", |d| d.status.is_finished()).await;
        assert_eq!(done.status, Status::Completed, "{done:?}");
        assert!(Path::new(&done.path).starts_with(&dir), "{done:?}");
        assert_exact(Path::new(&done.path), &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_download_folder_is_a_clear_error() {
    bounded(60, async {
        let mut sdm = Sandbox::new();
        let dir = sdm.root.path().join("ro");
        // Root ignores permission bits, so a read-only mount it is.
        let Some(_tmpfs) = Tmpfs::mount_or_skip(
            &dir,
            "ro,size=1m",
            "a_read_only_download_folder_is_a_clear_error",
        ) else {
            return;
        };
        let server = TestServer::start().await;
        let file = server.serve("/a.bin", FileSpec::new(MIB).seed(172));
        let mut client = sdm.start_and_connect().await;
        // Either the setting is refused at once, or the download fails saying why.
        let set = try_set_download_dir(&mut client, &dir).await;
        if let Err(e) = set {
            let msg = e.to_string();
            eprintln!("read-only folder refused as a setting: {msg}");
            assert!(
                msg.contains("read-only") || msg.contains(&dir.display().to_string()),
                "{msg}"
            );
            return;
        }
        let id = add_file(&mut client, &file, None).await;
        let done = wait_info(&mut client, id, 30, "finished or paused", |d| {
            d.status.is_finished() || d.status == Status::Paused
        })
        .await;
        assert_ne!(done.status, Status::Completed, "{done:?}");
        let error = done.error.clone().unwrap_or_default();
        eprintln!("read-only folder: {:?}: {error}", done.status);
        assert!(error.to_lowercase().contains("read-only"), "{error:?}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        // The service is still there.
        let _: protocol::PingResult = client.call(Cmd::Ping).await.expect("ping");
    })
    .await;
}
