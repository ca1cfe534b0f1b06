//! File names: from Content-Disposition (RFC 6266, with RFC 5987 `filename*`) or the URL, sanitized so that no name a
//! server sends can leave the download folder, and made unique so that no existing file is overwritten.

use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;

/// Longest name kept, in bytes (most file systems allow 255; room is left for " (99)" and ".part").
pub const MAX_NAME_BYTES: usize = 200;

/// Names Windows reserves for devices; a file so named cannot be opened there, so they are never produced.
const RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// The file name a `Content-Disposition` value gives, unsanitized. `filename*` wins over `filename` (RFC 6266 §4.3).
pub fn from_content_disposition(value: &str) -> Option<String> {
    let mut plain = None;
    let mut extended = None;
    for param in split_params(value).into_iter().skip(1) {
        let Some((key, val)) = param.split_once('=') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        let val = val.trim();
        match key.as_str() {
            "filename*" => extended = decode_ext_value(val),
            "filename" => plain = Some(unquote(val)),
            _ => {}
        }
    }
    extended.or(plain).filter(|n| !n.trim().is_empty())
}

/// Split on `;` outside quoted strings.
fn split_params(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        match c {
            _ if escaped => {
                cur.push(c);
                escaped = false;
            }
            '\\' if quoted => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ';' if !quoted => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    parts
}

fn unquote(val: &str) -> String {
    let Some(inner) = val.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return val.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// RFC 5987 `charset'lang'pct-encoded`. UTF-8 and ISO-8859-1 are decoded; other charsets are not trusted.
fn decode_ext_value(val: &str) -> Option<String> {
    let val = unquote(val);
    let mut parts = val.splitn(3, '\'');
    let charset = parts.next()?.to_ascii_lowercase();
    let _lang = parts.next()?;
    let encoded = parts.next()?;
    let bytes: Vec<u8> = percent_decode_str(encoded).collect();
    match charset.as_str() {
        "utf-8" => String::from_utf8(bytes).ok(),
        "iso-8859-1" => Some(bytes.iter().map(|&b| b as char).collect()),
        _ => None,
    }
}

/// The last path segment of a URL, percent-decoded, if any.
pub fn from_url(url: &url::Url) -> Option<String> {
    let seg = url.path_segments()?.rev().find(|s| !s.is_empty())?;
    let decoded = percent_decode_str(seg).decode_utf8_lossy().into_owned();
    (!decoded.trim().is_empty()).then_some(decoded)
}

/// Make a server-supplied name safe: the last path component only, no control characters or characters file systems
/// refuse, no leading dots, no reserved device names, at most [`MAX_NAME_BYTES`]. Never empty.
pub fn sanitize(name: &str) -> String {
    // One pass can expose what an earlier step would have removed (a dot stripped before a space, a cut that ends
    // in one), so repeat until nothing changes: the result is a fixed point.
    let mut out = sanitize_once(name);
    for _ in 0..8 {
        let again = sanitize_once(&out);
        if again == out {
            break;
        }
        out = again;
    }
    out
}

fn sanitize_once(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut out: String = last
        .chars()
        .map(|c| match c {
            c if c.is_control() => '_',
            '<' | '>' | ':' | '"' | '|' | '?' | '*' => '_',
            c => c,
        })
        .collect();
    out = out
        .trim()
        .trim_start_matches('.')
        .trim_end_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_start()
        .to_string();
    if out.is_empty() {
        out = "download".to_string();
    }
    let stem = out.split('.').next().unwrap_or("");
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(stem)) {
        out.insert(0, '_');
    }
    truncate_keeping_extension(&out, MAX_NAME_BYTES)
}

/// Check a name a user typed. Unlike a server's name, a bad one is refused with the reason rather than repaired.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("file name is empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "file name is {} bytes long; at most {MAX_NAME_BYTES} are allowed",
            name.len()
        ));
    }
    if name.contains(['/', '\\']) {
        return Err(
            "file name must not contain a path separator (set the download folder in settings)"
                .into(),
        );
    }
    if name.chars().any(char::is_control) {
        return Err("file name must not contain control characters".into());
    }
    if name == "."
        || name == ".."
        || name.starts_with('.') && name.trim_start_matches('.').is_empty()
    {
        return Err(format!("{name:?} is not a file name"));
    }
    let stem = name.split('.').next().unwrap_or("");
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(stem)) {
        return Err(format!("{name:?} is a reserved device name"));
    }
    Ok(())
}

fn truncate_keeping_extension(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let (stem, ext) = split_ext(name);
    let ext = if ext.len() < 20 { ext } else { "" };
    let keep = max - ext.len();
    let mut cut = keep.min(stem.len());
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{}", &stem[..cut], ext)
}

/// `("name", ".ext")`; a leading dot does not start an extension.
fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    }
}

/// The suffix of the file being written.
pub const PART_SUFFIX: &str = ".part";

/// The `.part` file beside a final path.
pub fn part_path(final_path: &Path) -> PathBuf {
    let mut s = final_path.as_os_str().to_owned();
    s.push(PART_SUFFIX);
    PathBuf::from(s)
}

/// `dir/name`, or `dir/name (1).ext`, `(2)`, ... : the first whose file and `.part` file both do not exist.
pub fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let (stem, ext) = split_ext(name);
    for n in 0u32.. {
        let candidate = if n == 0 {
            name.to_string()
        } else {
            format!("{stem} ({n}){ext}")
        };
        let path = dir.join(candidate);
        if !path.exists() && !part_path(&path).exists() {
            return path;
        }
    }
    unreachable!("u32 names exhausted")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn content_disposition_plain_and_quoted() {
        assert_eq!(
            from_content_disposition("attachment; filename=a.zip").as_deref(),
            Some("a.zip")
        );
        assert_eq!(
            from_content_disposition(r#"attachment; filename="a b;c.zip""#).as_deref(),
            Some("a b;c.zip")
        );
        assert_eq!(
            from_content_disposition(r#"inline; filename="q\"uote.txt""#).as_deref(),
            Some("q\"uote.txt")
        );
        assert_eq!(from_content_disposition("attachment"), None);
    }

    #[test]
    fn extended_filename_wins() {
        let v = r#"attachment; filename="fallback.txt"; filename*=UTF-8''%E2%82%AC%20rates.txt"#;
        assert_eq!(from_content_disposition(v).as_deref(), Some("€ rates.txt"));
        let v = "attachment; filename*=iso-8859-1'en'%A3%20rates.txt";
        assert_eq!(from_content_disposition(v).as_deref(), Some("£ rates.txt"));
    }

    #[test]
    fn unknown_charset_falls_back_to_plain() {
        let v = r#"attachment; filename*=koi8-r''%E1; filename="plain.txt""#;
        assert_eq!(from_content_disposition(v).as_deref(), Some("plain.txt"));
    }

    #[test]
    fn traversal_is_stripped() {
        assert_eq!(sanitize("../../etc/passwd"), "passwd");
        assert_eq!(sanitize("..\\..\\win.ini"), "win.ini");
        assert_eq!(sanitize(".."), "download");
        assert_eq!(sanitize("/"), "download");
        assert_eq!(sanitize(".bashrc"), "bashrc");
    }

    #[test]
    fn control_characters_and_reserved_names() {
        assert_eq!(sanitize("a\0b\nc.txt"), "a_b_c.txt");
        assert_eq!(sanitize("CON.txt"), "_CON.txt");
        assert_eq!(sanitize("what?.txt"), "what_.txt");
    }

    #[test]
    fn long_names_keep_their_extension() {
        let long = format!("{}.iso", "x".repeat(10_000));
        let s = sanitize(&long);
        assert!(s.len() <= MAX_NAME_BYTES);
        assert!(s.ends_with(".iso"));
        let multibyte = "é".repeat(500);
        assert!(sanitize(&multibyte).len() <= MAX_NAME_BYTES);
    }

    #[test]
    fn user_names_are_refused_not_repaired() {
        assert!(validate_user_name("ok.txt").is_ok());
        for bad in [
            "",
            "..",
            "a/b",
            "/etc/passwd",
            "a\0b",
            "NUL",
            "com1.txt",
            &"x".repeat(10_000),
        ] {
            assert!(
                validate_user_name(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn name_from_url_is_decoded() {
        let u = url::Url::parse("http://h/dir/my%20file.bin?x=1").unwrap();
        assert_eq!(from_url(&u).as_deref(), Some("my file.bin"));
        let u = url::Url::parse("http://h/").unwrap();
        assert_eq!(from_url(&u), None);
    }

    #[test]
    fn unique_path_skips_existing_files_and_part_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"x").unwrap();
        std::fs::write(dir.path().join("a (1).txt.part"), b"x").unwrap();
        assert_eq!(
            unique_path(dir.path(), "a.txt"),
            dir.path().join("a (2).txt")
        );
        assert_eq!(unique_path(dir.path(), "b"), dir.path().join("b"));
    }

    proptest! {
        #[test]
        fn sanitized_names_stay_in_their_folder(name in any::<String>()) {
            let s = sanitize(&name);
            prop_assert!(!s.is_empty());
            prop_assert!(!s.contains('/') && !s.contains('\\') && !s.contains('\0'));
            prop_assert!(s != "." && s != "..");
            prop_assert!(s.len() <= MAX_NAME_BYTES);
            prop_assert!(validate_user_name(&s).is_ok(), "sanitized {:?} fails validation", s);
        }

        #[test]
        fn sanitize_is_a_fixed_point(name in any::<String>()) {
            let once = sanitize(&name);
            prop_assert_eq!(sanitize(&once), once.clone());
            prop_assert_eq!(once.trim(), once.as_str());
        }

        #[test]
        fn content_disposition_never_panics(v in any::<String>()) {
            let _ = from_content_disposition(&v);
        }
    }
}
