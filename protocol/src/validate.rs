//! The checks on what a request may carry, written once: the engine, the command line and the popup all call these,
//! so a value the popup accepts is one the engine accepts, with the same message.
//!
//! Every function takes the value as the sender wrote it and answers with the value to use or an [`Invalid`] whose
//! message names the field and says what would be accepted.

use std::path::{Component, Path, PathBuf};

use crate::{MAX_CONCURRENT_RANGE, MAX_RETRIES, MAX_URL_LEN, THREADS_RANGE};

/// Why a value was refused, worded for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Most headers a download may carry.
pub const MAX_HEADERS: usize = 64;

/// Longest header name, the limit of the `http` crate that finally sends it.
const MAX_HEADER_NAME_LEN: usize = (1 << 16) - 1;

/// Longest header value, in bytes. Servers refuse longer request lines anyway (nginx's default is 8 KiB), a browser
/// caps one cookie at 4 KiB, and every value is rewritten into `state.json` with each checkpoint.
pub const MAX_HEADER_VALUE_LEN: usize = 8 * 1024;

/// Most bytes a download's headers may hold together, names and values (the referrer among them).
pub const MAX_HEADERS_LEN: usize = 64 * 1024;

/// Longest referrer, in bytes; it is sent as a header, so the header value's limit.
pub const MAX_REFERRER_LEN: usize = MAX_HEADER_VALUE_LEN;

/// An http or https URL of at most [`MAX_URL_LEN`] bytes, with a host and without credentials in it. Surrounding
/// spaces are ignored.
pub fn url(text: &str) -> Result<url::Url, Invalid> {
    if text.len() > MAX_URL_LEN {
        return Err(Invalid(format!(
            "URL is {} bytes long; at most {MAX_URL_LEN} are allowed",
            text.len()
        )));
    }
    let url = url::Url::parse(text.trim()).map_err(|e| Invalid(format!("not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Invalid(format!(
            "only http or https URLs can be downloaded, not {}:",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Invalid(
            "URL must not contain a user name or password; send an Authorization header instead"
                .into(),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Invalid("URL has no host".into()));
    }
    Ok(url)
}

/// Connections per download, within [`THREADS_RANGE`].
pub fn threads(n: u32) -> Result<u32, Invalid> {
    between("threads", n, THREADS_RANGE)
}

/// Retries per connection, at most [`MAX_RETRIES`].
pub fn retries(n: u32) -> Result<u32, Invalid> {
    if n <= MAX_RETRIES {
        Ok(n)
    } else {
        Err(Invalid(format!(
            "retries must be at most {MAX_RETRIES}, not {n}"
        )))
    }
}

/// Downloads running at once, within [`MAX_CONCURRENT_RANGE`].
pub fn max_concurrent(n: u32) -> Result<u32, Invalid> {
    between("max_concurrent", n, MAX_CONCURRENT_RANGE)
}

fn between(name: &str, n: u32, range: std::ops::RangeInclusive<u32>) -> Result<u32, Invalid> {
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(Invalid(format!(
            "{name} must be between {} and {}, not {n}",
            range.start(),
            range.end()
        )))
    }
}

/// A request header that can be sent as written, surrounding spaces aside: the name an HTTP token, the value free of
/// control characters other than tab (a line break would let it smuggle in a header of its own).
pub fn header(name: &str, value: &str) -> Result<(), Invalid> {
    let name = name.trim();
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN || !name.bytes().all(is_token) {
        return Err(Invalid(format!(
            "header name {name:?} is not valid: use letters, digits and - (as in 'User-Agent: x')"
        )));
    }
    let value = value.trim();
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(Invalid(format!(
            "header {name} is {} bytes long; at most {MAX_HEADER_VALUE_LEN} are allowed",
            value.len()
        )));
    }
    // Bytes from 0x80 up are allowed: HTTP passes them through as opaque text, and browsers send such cookies.
    let is_text = |b: u8| b == b'\t' || (b >= 0x20 && b != 0x7f);
    if !value.bytes().all(is_text) {
        return Err(Invalid(format!(
            "header {name} has a line break or another control character in its value"
        )));
    }
    Ok(())
}

/// At most [`MAX_HEADERS`] headers.
pub fn header_count(n: usize) -> Result<(), Invalid> {
    if n <= MAX_HEADERS {
        Ok(())
    } else {
        Err(Invalid(format!("at most {MAX_HEADERS} headers, not {n}")))
    }
}

/// All of a download's headers together: at most [`MAX_HEADERS_LEN`] bytes of names and values.
pub fn headers_len<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), Invalid> {
    let total: usize = headers
        .into_iter()
        .map(|(name, value)| name.trim().len() + value.trim().len())
        .sum();
    if total <= MAX_HEADERS_LEN {
        Ok(())
    } else {
        Err(Invalid(format!(
            "headers are {total} bytes long together; at most {MAX_HEADERS_LEN} are allowed"
        )))
    }
}

/// A referrer: a URL of at most [`MAX_REFERRER_LEN`] bytes.
pub fn referrer(text: &str) -> Result<url::Url, Invalid> {
    if text.len() > MAX_REFERRER_LEN {
        return Err(Invalid(format!(
            "referrer is {} bytes long; at most {MAX_REFERRER_LEN} are allowed",
            text.len()
        )));
    }
    url::Url::parse(text.trim()).map_err(|e| Invalid(format!("referrer is not a URL: {e}")))
}

/// The headers a request carries, as they will be sent: at most [`MAX_HEADERS`], each a valid [`header`], and the
/// `referrer` (when given and not empty, a valid [`referrer`]) added as `Referer` unless one is among them; then all of
/// them together within [`MAX_HEADERS_LEN`]. `add` and `set_url` take their headers through this.
pub fn request_headers(
    headers: impl IntoIterator<Item = (String, String)>,
    referrer: Option<&str>,
) -> Result<Vec<(String, String)>, Invalid> {
    let mut headers: Vec<(String, String)> = headers.into_iter().collect();
    header_count(headers.len())?;
    if let Some(r) = referrer.filter(|r| !r.is_empty()) {
        self::referrer(r)?;
        if !headers
            .iter()
            .any(|(k, _)| k.trim().eq_ignore_ascii_case("referer"))
        {
            headers.push(("Referer".into(), r.to_owned()));
        }
    }
    for (name, value) in &headers {
        header(name, value)?;
    }
    headers_len(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    Ok(headers)
}

/// Where downloads may not go on one platform: folders refused with everything below them, and folders below
/// those that are allowed again. The root folder is always refused.
#[derive(Debug, Clone, Copy)]
pub struct SystemFolders {
    pub refused: &'static [&'static str],
    pub allowed: &'static [&'static str],
    /// Whether the file system ignores case (Windows): then `c:\windows` is `C:\Windows`, and `~` is matched the same
    /// way.
    pub ignore_case: bool,
}

/// The system's own folders on Linux and other Unixes. Two below them are allowed again: `/run/media`, where
/// udisks2 mounts removable drives, and `/dev/shm`, a tmpfs anyone may write to, as `/tmp` (the benchmark downloads
/// there). A home folder under one of them (`/var/home/<user>` on Fedora's Atomic desktops) is the user's own,
/// which [`download_dir`] allows.
pub const UNIX_SYSTEM_FOLDERS: SystemFolders = SystemFolders {
    refused: &[
        "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/proc",
        "/sys", "/dev", "/run", "/var",
    ],
    allowed: &["/run/media", "/dev/shm"],
    ignore_case: false,
};

/// A download folder: an absolute path that is neither the root folder, nor in or below one of `system`'s folders
/// (unless it is inside `home`, the user's own), nor inside a hidden folder of `home` (`~/.config/autostart`,
/// `~/.ssh`, `~/.local/bin`: a file placed there would run, or be trusted, without the user opening it). Returns the
/// path with `.` and `..` resolved as written; symbolic links are the caller's to resolve, and to check again with
/// [`resolved_download_dir`].
pub fn download_dir(
    dir: &str,
    home: Option<&Path>,
    system: &SystemFolders,
) -> Result<PathBuf, Invalid> {
    let path = Path::new(dir);
    if !path.is_absolute() {
        return Err(Invalid(format!(
            "download_dir must be an absolute path, not {dir:?}"
        )));
    }
    let path = lexical(path);
    match folder_refusal(&path, home, system) {
        None => Ok(path),
        Some(why) => Err(Invalid(format!("download_dir {dir:?} {why}"))),
    }
}

/// The same rule as [`download_dir`] for the folder `given` really is, once its symbolic links are followed:
/// `resolved`, with `home` resolved the same way.
pub fn resolved_download_dir(
    given: &str,
    resolved: &Path,
    home: Option<&Path>,
    system: &SystemFolders,
) -> Result<(), Invalid> {
    match folder_refusal(&lexical(resolved), home, system) {
        None => Ok(()),
        Some(why) => Err(Invalid(format!(
            "download_dir {given:?} leads through a symbolic link to {}, which {why}",
            resolved.display()
        ))),
    }
}

/// Why `path` (absolute, without `.` or `..`) cannot be a download folder, worded to follow its name.
fn folder_refusal(path: &Path, home: Option<&Path>, system: &SystemFolders) -> Option<String> {
    const CHOOSE: &str = "choose a folder of your own, such as ~/Downloads";
    if !path.components().any(|c| matches!(c, Component::Normal(_))) {
        return Some(format!("is the root folder: {CHOOSE}"));
    }
    let home = home
        .filter(|h| h.is_absolute())
        .map(lexical)
        .filter(|h| h.components().any(|c| matches!(c, Component::Normal(_))));
    if let Some(home) = home
        && let Some(inside) = below(path, &home, system.ignore_case)
    {
        let mut shown = PathBuf::new();
        for c in inside.components() {
            shown.push(c);
            if c.as_os_str().to_string_lossy().starts_with('.') {
                return Some(format!(
                    "is inside the hidden folder ~/{}, where a file may run or be trusted unopened: {CHOOSE}",
                    shown.display()
                ));
            }
        }
        return None;
    }
    let refused = system
        .refused
        .iter()
        .find(|f| below(path, Path::new(f), system.ignore_case).is_some())
        .filter(|_| {
            !system
                .allowed
                .iter()
                .any(|a| below(path, Path::new(a), system.ignore_case).is_some())
        })?;
    Some(format!("is inside the system folder {refused}: {CHOOSE}"))
}

/// What of `path` lies below `folder` (empty when they are the same), comparing whole components, and ignoring ASCII
/// case when `ignore_case`; `None` when `path` is not in `folder`.
fn below<'p>(path: &'p Path, folder: &Path, ignore_case: bool) -> Option<&'p Path> {
    if !ignore_case {
        return path.strip_prefix(folder).ok();
    }
    let mut rest = path.components();
    for want in folder.components() {
        let have = rest.next()?;
        if !have
            .as_os_str()
            .to_string_lossy()
            .eq_ignore_ascii_case(&want.as_os_str().to_string_lossy())
        {
            return None;
        }
    }
    Some(rest.as_path())
}

/// `path` with `.` dropped and each `..` taking away the component before it, as written (no link is followed).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// A `Content-Length` value: decimal digits only, surrounding spaces aside. A sign, a list (`5, 5`) or a number
/// beyond `u64` gives `None`, since a length read wrong would make the file wrong.
pub fn content_length(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        assert_eq!(
            url(" http://127.0.0.1/a ").unwrap().as_str(),
            "http://127.0.0.1/a"
        );
        assert!(url("https://example.org/a?b=c").is_ok());
        for (bad, says) in [
            ("ftp://x/a", "http or https"),
            ("file:///etc/passwd", "http or https"),
            ("javascript:alert(1)", "http or https"),
            ("data:,x", "http or https"),
            ("http://u:p@x/a", "password"),
            ("http://u@x/a", "user"),
            ("nope", "not a valid URL"),
            ("", "not a valid URL"),
            ("http://", "URL"),
        ] {
            let err = url(bad).unwrap_err();
            assert!(err.0.contains(says), "{bad}: {err}");
        }
        let long = format!("http://x/{}", "a".repeat(MAX_URL_LEN));
        assert!(url(&long).unwrap_err().0.contains("at most"));
    }

    #[test]
    fn numbers_are_checked_against_their_ranges() {
        assert_eq!(threads(1), Ok(1));
        assert_eq!(threads(32), Ok(32));
        assert_eq!(
            threads(0).unwrap_err().0,
            "threads must be between 1 and 32, not 0"
        );
        assert!(threads(33).is_err());
        assert_eq!(retries(0), Ok(0));
        assert_eq!(retries(MAX_RETRIES), Ok(MAX_RETRIES));
        assert_eq!(
            retries(101).unwrap_err().0,
            "retries must be at most 100, not 101"
        );
        assert_eq!(max_concurrent(4), Ok(4));
        assert!(max_concurrent(0).unwrap_err().0.contains("max_concurrent"));
        assert!(max_concurrent(u32::MAX).is_err());
    }

    #[test]
    fn headers_need_a_token_name_and_a_value_without_controls() {
        assert!(header("User-Agent", "x/1").is_ok());
        assert!(header(" Cookie ", " a=b; c=d ").is_ok());
        assert!(header("X-Tab", "a\tb").is_ok());
        assert!(header("X-Utf8", "café").is_ok());
        assert!(header("X-Empty", "").is_ok());
        for (name, value) in [
            ("", "v"),
            ("Bad Name", "v"),
            ("X:", "v"),
            ("X", "a\r\nInjected: b"),
            ("X", "a\0b"),
            ("X", "a\x7fb"),
        ] {
            let err = header(name, value).unwrap_err();
            assert!(err.0.contains("header"), "{name:?}: {value:?}: {err}");
        }
        assert!(header(&"a".repeat(MAX_HEADER_NAME_LEN + 1), "v").is_err());
    }

    #[test]
    fn request_headers_add_the_referrer_unless_one_is_there_and_check_every_header() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ok = request_headers(h(&[("Cookie", "a=1")]), Some("http://x/page")).unwrap();
        assert_eq!(ok, h(&[("Cookie", "a=1"), ("Referer", "http://x/page")]));
        let kept = request_headers(h(&[("referer", "http://y/")]), Some("http://x/")).unwrap();
        assert_eq!(
            kept,
            h(&[("referer", "http://y/")]),
            "the header wins over the field"
        );
        assert_eq!(request_headers(h(&[]), Some("")).unwrap(), h(&[]));
        assert!(request_headers(h(&[("Bad Name", "v")]), None).is_err());
        assert!(request_headers(h(&[("Cookie", "a\r\nX: y")]), None).is_err());
        assert!(request_headers(h(&[]), Some("not a url")).is_err());
        let many: Vec<(String, String)> = (0..=MAX_HEADERS)
            .map(|i| (format!("X-{i}"), "v".into()))
            .collect();
        assert!(request_headers(many, None).is_err());
    }

    #[test]
    fn header_values_headers_together_and_referrers_are_bounded() {
        let most = "v".repeat(MAX_HEADER_VALUE_LEN);
        assert!(header("Cookie", &most).is_ok());
        assert!(
            header("Cookie", &format!(" {most} ")).is_ok(),
            "spaces aside"
        );
        let err = header("Cookie", &format!("{most}v")).unwrap_err();
        assert_eq!(
            err.0,
            "header Cookie is 8193 bytes long; at most 8192 are allowed"
        );
        assert!(header("X", &"v".repeat(2 << 20)).is_err());

        let eight = |i: usize| (format!("X-{i}"), "v".repeat(8 * 1024 - 4));
        let fits: Vec<_> = (0..8).map(eight).collect();
        assert!(headers_len(fits.iter().map(|(k, v)| (k.as_str(), v.as_str()))).is_ok());
        let over: Vec<_> = (0..9).map(eight).collect();
        let err = headers_len(over.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_err();
        assert!(err.0.contains("at most 65536"), "{err}");

        assert!(referrer("https://example.org/page").is_ok());
        let long = format!("https://example.org/{}", "a".repeat(MAX_REFERRER_LEN));
        assert!(referrer(&long).unwrap_err().0.contains("at most 8192"));
        assert!(referrer("not a url").unwrap_err().0.contains("not a URL"));
    }

    // These folder tests use Unix paths and Unix's system folders; a Windows list comes with tests of its own.
    #[cfg(unix)]
    fn folder(dir: &str) -> Result<PathBuf, Invalid> {
        download_dir(dir, Some(Path::new("/home/ann")), &UNIX_SYSTEM_FOLDERS)
    }

    #[cfg(unix)]
    #[test]
    fn download_folders_of_ones_own_are_accepted() {
        for dir in [
            "/home/ann",
            "/home/ann/Downloads",
            "/home/ann/a.b/c",
            "/home/ann/Downloads/../Music",
            "/tmp/dl",
            "/mnt/disk",
            "/media/ann/usb",
            "/run/media/ann/usb",
            "/dev/shm/sdm-bench/out",
            "/srv/files",
            "/etcetera",
            "/variety",
            "/home/bob/shared",
        ] {
            assert!(folder(dir).is_ok(), "{dir}: {:?}", folder(dir));
        }
        assert_eq!(
            folder("/home/ann/./x/../Downloads").unwrap(),
            Path::new("/home/ann/Downloads")
        );
    }

    #[cfg(unix)]
    #[test]
    fn system_folders_and_hidden_folders_of_home_are_refused() {
        for (dir, says) in [
            ("/", "root folder"),
            ("/..", "root folder"),
            ("/etc", "system folder /etc"),
            ("/etc/sdm-test", "system folder /etc"),
            ("/usr/local/bin", "system folder /usr"),
            ("/bin", "/bin"),
            ("/sbin", "/sbin"),
            ("/lib/x", "/lib"),
            ("/lib64", "/lib64"),
            ("/lib32", "/lib32"),
            ("/libx32", "/libx32"),
            ("/boot/efi", "/boot"),
            ("/proc/self", "/proc"),
            ("/sys/kernel", "/sys"),
            ("/dev/sda", "/dev"),
            ("/run/user/1000", "/run"),
            ("/var/tmp", "/var"),
            ("/home/ann/../../etc/cron.d", "system folder /etc"),
            ("/home/ann/.config/autostart", "hidden folder ~/.config"),
            ("/home/ann/.ssh", "hidden folder ~/.ssh"),
            ("/home/ann/.local/bin", "hidden folder ~/.local"),
            (
                "/home/ann/Downloads/.hidden/x",
                "hidden folder ~/Downloads/.hidden",
            ),
            ("/home/ann/x/../.bashrc.d", "hidden folder ~/.bashrc.d"),
        ] {
            let err = folder(dir).unwrap_err();
            assert!(err.0.contains(says), "{dir}: {err}");
            assert!(
                err.0.contains("choose a folder of your own"),
                "{dir}: {err}"
            );
        }
        assert!(folder("Downloads").unwrap_err().0.contains("absolute"));
        assert!(folder("~/Downloads").unwrap_err().0.contains("absolute"));
    }

    #[cfg(unix)]
    #[test]
    fn a_home_below_a_system_folder_is_the_users_own() {
        let home = Some(Path::new("/var/home/ann"));
        let check = |dir| download_dir(dir, home, &UNIX_SYSTEM_FOLDERS);
        assert!(check("/var/home/ann/Downloads").is_ok());
        assert!(check("/var/home/ann/.ssh").is_err());
        assert!(check("/var/home/bob").is_err());
        assert!(check("/var/lib").is_err());
        // Without a home (or with `/` as home) every system folder is refused and no folder is exempt.
        for home in [None, Some(Path::new("/")), Some(Path::new("relative"))] {
            assert!(download_dir("/etc/x", home, &UNIX_SYSTEM_FOLDERS).is_err());
            assert!(download_dir("/tmp/.x", home, &UNIX_SYSTEM_FOLDERS).is_ok());
        }
    }

    /// Windows ignores case: `c:\windows` is the system folder, and `c:\users\ann\.ssh` is inside the home
    /// `C:\Users\Ann`. (Written with `/`, which this test's platform splits into components.)
    #[cfg(unix)]
    #[test]
    fn where_case_is_ignored_a_folder_spelt_otherwise_is_the_same_folder() {
        const FOLDERS: SystemFolders = SystemFolders {
            refused: &["/Windows", "/Program Files"],
            allowed: &["/Windows/Allowed"],
            ignore_case: true,
        };
        let home = Some(Path::new("/Users/Ann"));
        let check = |dir| download_dir(dir, home, &FOLDERS);
        assert!(check("/windows/system32").is_err());
        assert!(check("/PROGRAM FILES/app").is_err());
        assert!(check("/windows/allowed/x").is_ok());
        assert!(check("/users/ann/.ssh").is_err());
        assert!(check("/users/ann/Downloads").is_ok());
        assert!(check("/Windowsx").is_ok(), "whole components only");
    }

    #[cfg(unix)]
    #[test]
    fn a_link_that_leads_into_a_system_folder_is_refused_by_its_target() {
        let home = Some(Path::new("/home/ann"));
        let link = |to: &str| {
            resolved_download_dir("/home/ann/dl", Path::new(to), home, &UNIX_SYSTEM_FOLDERS)
        };
        assert!(link("/home/ann/real-dl").is_ok());
        assert!(link("/mnt/disk/dl").is_ok());
        let err = link("/etc").unwrap_err();
        assert!(err.0.contains("symbolic link to /etc"), "{err}");
        assert!(err.0.contains("system folder /etc"), "{err}");
        assert!(link("/home/ann/.config/autostart").is_err());
    }

    #[test]
    fn at_most_64_headers() {
        assert!(header_count(0).is_ok());
        assert!(header_count(64).is_ok());
        assert!(
            header_count(65)
                .unwrap_err()
                .0
                .contains("at most 64 headers")
        );
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length("0"), Some(0));
        assert_eq!(content_length(" 1234 "), Some(1234));
        assert_eq!(content_length("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            " ",
            "+5",
            "-1",
            "5, 5",
            "1e3",
            "0x10",
            "18446744073709551616",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }
}
