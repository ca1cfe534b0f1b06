//! A file that changes on the server mid-download: the result is the whole new file or an error, never a splice.

use sdm_tests::{ALWAYS, FileSpec, ServedFile, sha256_file};

use crate::support::{finished_files_in, on_every_body_path, spec, tempdir, until};

const MIB: u64 = 1024 * 1024;

/// Check a finished download against both versions; on a mismatch, say how much of each it holds.
fn assert_not_spliced(
    result: &Result<std::path::PathBuf, sdm::engine::error::TransferError>,
    dir: &std::path::Path,
    file: &ServedFile,
) {
    match result {
        Ok(path) => {
            let got = std::fs::read(path).expect("read the result");
            let new = file.bytes_of_version(1);
            if got != new {
                let old = file.bytes_of_version(0);
                let from_old = got.iter().zip(&old).filter(|(a, b)| a == b).count();
                let from_new = got.iter().zip(&new).filter(|(a, b)| a == b).count();
                panic!(
                    "the file changed mid-download and the result is not the new version: {} bytes, {from_old} \
                     match the old version, {from_new} the new one (sha256 {})",
                    got.len(),
                    sha256_file(path)
                );
            }
        }
        Err(e) => assert!(
            finished_files_in(dir).is_empty(),
            "failed with `{e:#}` but left a file behind"
        ),
    }
}

/// Start a download (over the splice path or not), change the file once `at` bytes have been sent, and return the
/// result.
async fn change_midway(
    file: &ServedFile,
    at: u64,
    dir: &std::path::Path,
    splice: bool,
) -> Result<std::path::PathBuf, sdm::engine::error::TransferError> {
    let mut s = spec(file.url(), dir);
    s.threads = 4;
    s.retries = 10;
    s.splice = splice;
    let download = tokio::spawn(sdm::engine::oneshot::get(s, |_| {}));
    until(10, "the download to get going", || file.bytes_sent() >= at).await;
    file.change_content();
    download.await.expect("the download task does not panic")
}

/// Serve `spec` at `path`, change it once 1.5 MiB have been sent, and check the result is not a splice, over both
/// body paths.
async fn changed_midway_is_never_spliced(path: &str, spec: FileSpec) {
    on_every_body_path(60, path, async |server, path, splice| {
        let file = server.serve(path, spec.clone());
        let dir = tempdir();

        let result = change_midway(&file, MIB + MIB / 2, dir.path(), splice).await;

        assert_not_spliced(&result, dir.path(), &file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_etag_mid_download_is_never_spliced() {
    // Every response is cut at 1 MiB, so the download must come back for more after the change.
    changed_midway_is_never_spliced(
        "/moving.bin",
        FileSpec::new(8 * MIB)
            .seed(31)
            .etag()
            .rate(2 * MIB)
            .cut_after(MIB, ALWAYS),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_last_modified_mid_download_is_never_spliced() {
    changed_midway_is_never_spliced(
        "/dated.bin",
        FileSpec::new(8 * MIB)
            .seed(32)
            .last_modified()
            .rate(2 * MIB)
            .cut_after(MIB, ALWAYS),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_requests_carry_the_validator_in_if_range() {
    on_every_body_path(30, "/tagged.bin", async |server, path, splice| {
        let file = server.serve(
            path,
            FileSpec::new(4 * MIB).seed(33).etag().cut_after(MIB, 2),
        );

        crate::support::fetch_exact(&file, |s| s.splice = splice, "download succeeds").await;

        let etag = file.etag();
        let later: Vec<_> = file
            .gets()
            .into_iter()
            .filter(|r| r.range_start() > Some(0))
            .collect();
        assert!(!later.is_empty());
        for r in later {
            assert_eq!(
                r.header("if-range"),
                Some(etag.as_str()),
                "a ranged request without `If-Range: {etag}`: {r:?}"
            );
        }
    })
    .await;
}
