//! File names from the server are hostile input: whatever `Content-Disposition` says, the file lands inside the
//! output folder under a harmless name, and an existing file is never overwritten.

use std::path::{Path, PathBuf};

use sdm_tests::{FileSpec, ServedFile, TestServer};

use crate::support::{assert_exact, bounded, finished_files_in, get, names_in, spec, tempdir};

/// Download a file served with `Content-Disposition: <disposition>` into `root/out` and check where it landed.
/// Returns the name it got.
async fn land(server: &TestServer, case: usize, disposition: Vec<u8>) -> String {
    let (result, file, root) = fetch(server, case, disposition).await;
    let path = result.unwrap_or_else(|e| panic!("case {case}: download fails: {e:#}"));
    check_landed(case, &path, &file, root.path());
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Serve a file with `Content-Disposition: <disposition>` and download it into a fresh `root/out`.
async fn fetch(
    server: &TestServer,
    case: usize,
    disposition: Vec<u8>,
) -> (anyhow::Result<PathBuf>, ServedFile, tempfile::TempDir) {
    let url_path = format!("/download{case}.php");
    let file = server.serve(
        &url_path,
        FileSpec::new(50_000)
            .seed(40 + case as u64)
            .content_disposition(disposition),
    );
    let root = tempdir();
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // One retry: these cases are about names, and a response hyper cannot parse would otherwise be retried with
    // backoff for half a minute before failing.
    let mut s = spec(file.url(), &out);
    s.retries = 1;
    let result = get(s).await;
    (result, file, root)
}

/// The download is exact, alone in `root/out`, and harmlessly named.
fn check_landed(case: usize, path: &Path, file: &ServedFile, root: &Path) {
    let out = root.join("out");
    assert_exact(path, file);
    assert_eq!(
        path.parent().map(Path::canonicalize).transpose().unwrap(),
        Some(out.canonicalize().unwrap()),
        "case {case}: landed outside the output folder at {}",
        path.display()
    );
    assert_eq!(
        names_in(root),
        ["out"],
        "case {case}: wrote next to the output folder"
    );
    let names = names_in(&out);
    assert_eq!(names.len(), 1, "case {case}: {names:?}");
    let name = names[0].clone();
    assert_eq!(
        Some(name.as_str()),
        path.file_name().and_then(|n| n.to_str())
    );
    assert_harmless(case, &name);
}

fn assert_harmless(case: usize, name: &str) {
    assert!(
        !name.is_empty() && name != "." && name != "..",
        "case {case}: name {name:?}"
    );
    assert!(
        name.len() <= 255,
        "case {case}: a name of {} bytes",
        name.len()
    );
    for c in name.chars() {
        assert!(
            !c.is_control() && c != '/' && c != '\\' && !is_invisible(c),
            "case {case}: name {name:?} holds {c:?}"
        );
    }
    assert!(
        !name.starts_with('.'),
        "case {case}: a hidden name {name:?}"
    );
    let stem = name.split('.').next().unwrap_or("").trim_end();
    assert!(
        !DEVICES.iter().any(|d| d.eq_ignore_ascii_case(stem)),
        "case {case}: a device name {name:?}"
    );
}

/// Windows' device names: a file so named cannot be opened there.
const DEVICES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Characters that change how a name reads without being seen: bidi controls and zero-width characters.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200B}'..='\u{200F}' | '\u{2060}' | '\u{FEFF}'
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_content_disposition_names_stay_inside_the_folder() {
    bounded(60, async {
        let server = TestServer::start().await;
        let long = format!("attachment; filename=\"{}.bin\"", "A".repeat(10_000));
        let cases: Vec<Vec<u8>> = vec![
            b"attachment; filename=\"../../etc/passwd\"".to_vec(),
            b"attachment; filename*=UTF-8''%2e%2e%2fevil%00.txt".to_vec(),
            b"attachment; filename*=UTF-8''a%01b%1B%5B31mc%7F%C2%85.txt".to_vec(),
            long.into_bytes(),
            b"attachment; filename=\"/etc/shadow\"".to_vec(),
            b"attachment; filename=\"..\\\\..\\\\windows\\\\evil.exe\"".to_vec(),
            b"attachment; filename=\"..\"".to_vec(),
            b"attachment; filename=\"\"".to_vec(),
            b"attachment; filename*=UTF-8''%2F%2Fserver%2Fshare%0D%0Ax.txt".to_vec(),
            b"attachment; filename=\"caf\xe9.txt\"".to_vec(),
        ];
        for (case, disposition) in cases.into_iter().enumerate() {
            land(&server, case, disposition).await;
        }
    })
    .await;
}

/// The name rule of issue 15 for a server's names: no leading dot, no bidi or zero-width character (a name that reads
/// `invoiceexe.pdf` may be `invoice\u{202E}fdp.exe`), no Windows device name in any case or with any extension.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_invisible_and_device_names_from_the_server_are_repaired() {
    bounded(60, async {
        let server = TestServer::start().await;
        let cases: [(&[u8], &str); 8] = [
            (b"attachment; filename=\".bashrc\"", "bashrc"),
            (
                b"attachment; filename*=UTF-8''invoice%E2%80%AEfdp.exe",
                "invoicefdp.exe",
            ),
            (
                b"attachment; filename*=UTF-8''a%E2%80%8Bb%E2%80%8C%E2%80%8D%E2%81%A0%EF%BB%BF.txt",
                "ab.txt",
            ),
            (
                b"attachment; filename*=UTF-8''%E2%81%A6x%E2%81%A9%E2%80%8E%E2%80%8F.txt",
                "x.txt",
            ),
            (
                b"attachment; filename*=UTF-8''.%E2%80%8B.profile",
                "profile",
            ),
            (b"attachment; filename=\"CON.txt\"", "_CON.txt"),
            (b"attachment; filename=\"lpt1\"", "_lpt1"),
            (
                b"attachment; filename*=UTF-8''C%E2%80%8BOM1.tar.gz",
                "_COM1.tar.gz",
            ),
        ];
        for (case, (disposition, expected)) in cases.into_iter().enumerate() {
            let name = land(&server, 100 + case, disposition.to_vec()).await;
            assert_eq!(name, expected, "case {case}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_control_characters_in_the_header_land_safely_or_fail_cleanly() {
    bounded(30, async {
        let server = TestServer::start().await;
        // HTTP parsers (hyper's included) may refuse such a header outright; then the download fails, and that is
        // fine as long as nothing is written.
        let disposition = b"attachment; filename=\"a\x01b\x1b[31mc\x7f.txt\"".to_vec();
        let (result, file, root) = fetch(&server, 0, disposition).await;
        match result {
            Ok(path) => check_landed(0, &path, &file, root.path()),
            Err(e) => assert!(
                finished_files_in(&root.path().join("out")).is_empty(),
                "failed with `{e:#}` but left a file"
            ),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filename_star_wins_over_filename() {
    bounded(30, async {
        let server = TestServer::start().await;
        let name = land(
            &server,
            0,
            b"attachment; filename=\"fallback.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
                .to_vec(),
        )
        .await;
        assert_eq!(name, "résumé.pdf");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_file_is_never_overwritten() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve(
            "/get?id=7",
            FileSpec::new(100_000)
                .seed(50)
                .content_disposition("attachment; filename=\"report.pdf\""),
        );
        let dir = tempdir();
        std::fs::write(dir.path().join("report.pdf"), b"the user's own report").unwrap();

        let first = get(spec(file.url(), dir.path()))
            .await
            .expect("first download succeeds");
        let second = get(spec(file.url(), dir.path()))
            .await
            .expect("second download succeeds");

        assert_eq!(first, dir.path().join("report (1).pdf"));
        assert_eq!(second, dir.path().join("report (2).pdf"));
        assert_exact(&first, &file);
        assert_exact(&second, &file);
        assert_eq!(
            std::fs::read(dir.path().join("report.pdf")).unwrap(),
            b"the user's own report"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_appears_meanwhile_is_not_overwritten() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve("/late.bin", FileSpec::new(1 << 20).seed(51).rate(1 << 20));
        let dir = tempdir();
        let mut s = spec(file.url(), dir.path());
        s.threads = 1;
        let download = tokio::spawn(crate::support::get(s));
        crate::support::until(10, "the download to start", || file.bytes_sent() > 0).await;
        std::fs::write(dir.path().join("late.bin"), b"saved by the user meanwhile").unwrap();

        let path = download.await.unwrap().expect("download succeeds");

        assert_eq!(path, dir.path().join("late (1).bin"));
        assert_exact(&path, &file);
        assert_eq!(
            std::fs::read(dir.path().join("late.bin")).unwrap(),
            b"saved by the user meanwhile"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_the_url_are_decoded_and_sanitized() {
    bounded(30, async {
        let server = TestServer::start().await;
        let decoded = server.serve(
            "/files/r%C3%A9sum%C3%A9%20final.pdf",
            FileSpec::new(1000).seed(52),
        );
        let dir = tempdir();
        let path = get(spec(decoded.url(), dir.path()))
            .await
            .expect("download succeeds");
        assert_eq!(path, dir.path().join("résumé final.pdf"));
        assert_exact(&path, &decoded);

        for (case, url_path) in [
            "/a/..%2F..%2Fetc%2Fpasswd",
            "/a/%00%0d%0a.txt",
            "/",
            "/get.php?file=../../x.zip",
        ]
        .into_iter()
        .enumerate()
        {
            let file = server.serve(url_path, FileSpec::new(1000).seed(53 + case as u64));
            let root = tempdir();
            let out = root.path().join("out");
            std::fs::create_dir(&out).unwrap();
            let path = get(spec(file.url(), &out))
                .await
                .unwrap_or_else(|e| panic!("{url_path}: {e:#}"));
            check_landed(case, &path, &file, root.path());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_downloads_of_one_name_at_once_get_two_files() {
    bounded(30, async {
        let server = TestServer::start().await;
        let file = server.serve("/twin.bin", FileSpec::new(2 << 20).seed(57).rate(4 << 20));
        let dir = tempdir();

        let (a, b) = tokio::join!(
            crate::support::get(spec(file.url(), dir.path())),
            crate::support::get(spec(file.url(), dir.path()))
        );

        let (a, b) = (a.expect("first succeeds"), b.expect("second succeeds"));
        assert_ne!(a, b);
        assert_exact(&a, &file);
        assert_exact(&b, &file);
        assert_eq!(names_in(dir.path()), ["twin (1).bin", "twin.bin"]);
    })
    .await;
}
