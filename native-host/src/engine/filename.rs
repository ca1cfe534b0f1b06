//! File names: from Content-Disposition (RFC 6266, with RFC 5987 `filename*`) or the URL, sanitized so that no name a
//! server sends can leave the download folder or mislead the user, and the names tried in turn for a file, so that no
//! existing file is overwritten (`part::reserve` tries them).

use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;

/// Longest name kept, in bytes: file systems allow 255, and room is left for the " (9999)" of a taken name and the
/// ".part" of the file being written.
pub const MAX_NAME_BYTES: usize = 200;

/// Names Windows reserves for devices; a file so named cannot be opened there, so they are never produced.
const RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "COM0", "COM1", "COM2", "COM3", "COM4",
    "COM5", "COM6", "COM7", "COM8", "COM9", "COM¹", "COM²", "COM³", "LPT0", "LPT1", "LPT2", "LPT3",
    "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9", "LPT¹", "LPT²", "LPT³",
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

/// Make a name safe, whoever gave it (the server, the user, the browser): the last path component only; no control,
/// bidi-control or zero-width characters (a name that reads `exe.pdf` may be `fdp.exe`), nor characters Windows
/// refuses; no leading dot (`.bashrc` becomes `bashrc`: a download never lands hidden or as a shell's start-up file);
/// no trailing dots or spaces; no Windows device name (`CON`, `com1.txt`, ..., which get a leading `_`); at most
/// [`MAX_NAME_BYTES`], cut on a character boundary keeping the extension. Never empty, and a fixed point:
/// `sanitize(sanitize(x)) == sanitize(x)`.
pub fn sanitize(name: &str) -> String {
    // One pass can expose what an earlier step would have removed (a cut that ends in a space), so repeat until
    // nothing changes: the result is a fixed point. A pass only shortens the name or adds the one `_` that makes a
    // reserved name safe, so two or three passes do; the bound is a guard, not a limit ever reached.
    let mut out = sanitize_once(name);
    for _ in 0..16 {
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
    let out: String = last
        .chars()
        .filter(|&c| !is_invisible(c))
        .map(|c| match c {
            c if c.is_control() => '_',
            '<' | '>' | ':' | '"' | '|' | '?' | '*' => '_',
            c => c,
        })
        .collect();
    let mut out = out
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end_matches(|c: char| c == '.' || c.is_whitespace())
        .to_string();
    if out.is_empty() {
        out = "download".to_string();
    }
    if is_reserved(&out) {
        out.insert(0, '_');
    }
    truncate_keeping_extension(&out, MAX_NAME_BYTES)
}

/// Characters that change how a name reads without being seen: bidi embeddings, overrides, isolates and marks
/// (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C) and zero-width ones (U+200B-U+200D, U+2060, U+FEFF).
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2060}'
            | '\u{FEFF}'
            | '\u{061C}'
    )
}

/// A Windows device name, whatever its case and extension (`con`, `LPT1.log`, `aux .txt`).
pub fn is_reserved(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or("").trim_end();
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(stem))
}

/// Check a name a user (or the browser) asked for. What would change its meaning (a separator, a control, bidi or
/// zero-width character, a device name, too many bytes, nothing but dots) is refused with the reason rather than
/// repaired; the rest of the name rule is applied when the file is reserved (`part::reserve` runs [`sanitize`]), so a
/// requested `.bashrc` lands as `bashrc`, like a server's.
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
    if name.chars().any(is_invisible) {
        return Err(
            "file name must not contain invisible or direction-changing characters (U+202E and the like)".into(),
        );
    }
    if name == "."
        || name == ".."
        || name.starts_with('.') && name.trim_start_matches('.').is_empty()
    {
        return Err(format!("{name:?} is not a file name"));
    }
    if is_reserved(name) {
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

/// How many names [`candidate`] offers for one download (`name`, then `name (1)` to `name (9999)`) before the
/// download fails with a clear error rather than looking further.
pub const MAX_CANDIDATES: u32 = 10_000;

/// The `n`th name tried for `name`: `name` itself, then `name (1).ext`, `name (2).ext`, ...; whether one is free is
/// found by trying to create it (its `.part` file, with `O_EXCL`), never by a check before a create.
pub fn candidate(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    let (stem, ext) = split_ext(name);
    format!("{stem} ({n}){ext}")
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
    fn candidates_number_the_stem_and_keep_the_extension() {
        assert_eq!(candidate("a.txt", 0), "a.txt");
        assert_eq!(candidate("a.txt", 2), "a (2).txt");
        assert_eq!(candidate("a.tar.gz", 1), "a.tar (1).gz");
        assert_eq!(candidate("b", 3), "b (3)");
        let longest = candidate(&sanitize(&"x".repeat(1000)), MAX_CANDIDATES - 1);
        assert!(longest.len() + PART_SUFFIX.len() <= 255);
    }

    #[test]
    fn dot_names_lose_their_dots() {
        assert_eq!(sanitize(".bashrc"), "bashrc");
        assert_eq!(sanitize("..bashrc"), "bashrc");
        assert_eq!(sanitize(". .x"), "x");
        assert_eq!(sanitize(".\u{200B}.profile"), "profile");
        assert_eq!(sanitize(&". ".repeat(100)), "download");
        assert_eq!(sanitize("a.tar.gz."), "a.tar.gz");
    }

    #[test]
    fn bidi_and_zero_width_characters_are_removed() {
        // "invoice\u{202E}fdp.exe" shows as "invoiceexe.pdf".
        assert_eq!(sanitize("invoice\u{202E}fdp.exe"), "invoicefdp.exe");
        assert_eq!(
            sanitize("a\u{200B}b\u{200C}c\u{200D}d\u{2060}e\u{FEFF}.txt"),
            "abcde.txt"
        );
        assert_eq!(sanitize("\u{2066}x\u{2069}\u{200E}\u{200F}.txt"), "x.txt");
        assert_eq!(sanitize("\u{202E}\u{200B}"), "download");
        // Removing them must not uncover a device name.
        assert_eq!(sanitize("C\u{200B}ON.txt"), "_CON.txt");
        assert!(validate_user_name("a\u{202E}b.txt").is_err());
        assert!(validate_user_name("a\u{FEFF}.txt").is_err());
    }

    #[test]
    fn every_reserved_name_is_renamed_in_any_case_and_with_any_extension() {
        for r in RESERVED {
            for name in [
                r.to_string(),
                r.to_lowercase(),
                format!("{r}.txt"),
                format!("{}.tar.gz", r.to_lowercase()),
                format!("{r} .log"),
            ] {
                let s = sanitize(&name);
                assert!(!is_reserved(&s), "{name:?} -> {s:?}");
                assert!(s.starts_with('_'), "{name:?} -> {s:?}");
                assert!(validate_user_name(&name).is_err(), "{name:?}");
            }
        }
        assert!(!is_reserved("CONSOLE.txt") && !is_reserved("com10") && !is_reserved("nully"));
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
        fn sanitized_names_keep_the_name_rule(name in any::<String>()) {
            let s = sanitize(&name);
            prop_assert!(!s.starts_with('.'), "{:?} -> {:?}", name, s);
            prop_assert!(!s.chars().any(|c| c.is_control() || is_invisible(c)), "{:?} -> {:?}", name, s);
            prop_assert!(!is_reserved(&s), "{:?} -> {:?}", name, s);
            prop_assert!(s.len() <= 255);
        }

        #[test]
        fn hostile_pieces_never_survive(
            pieces in proptest::collection::vec(
                prop_oneof![
                    Just(".".to_string()), Just(" ".to_string()), Just("/".to_string()),
                    Just("\\".to_string()), Just("\u{202E}".to_string()), Just("\u{200B}".to_string()),
                    Just("\u{2066}".to_string()), Just("\u{FEFF}".to_string()), Just("\n".to_string()),
                    Just("CON".to_string()), Just("lpt1".to_string()), Just("Nul".to_string()),
                    Just("é".to_string()), Just("x".repeat(120)), Just(".txt".to_string()),
                    "[a-z]{1,3}",
                ],
                0..12,
            )
        ) {
            let name = pieces.concat();
            let s = sanitize(&name);
            prop_assert!(!s.is_empty() && !s.starts_with('.'), "{:?} -> {:?}", name, s);
            prop_assert!(!s.contains(['/', '\\']), "{:?} -> {:?}", name, s);
            prop_assert!(!s.chars().any(|c| c.is_control() || is_invisible(c)), "{:?} -> {:?}", name, s);
            prop_assert!(!is_reserved(&s), "{:?} -> {:?}", name, s);
            prop_assert!(s.len() <= 255);
            prop_assert_eq!(sanitize(&s), s.clone());
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
