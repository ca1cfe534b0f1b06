//! Reading the popup's forms into protocol requests, and settings back into form text.
//!
//! Speeds are typed in KiB/s and sizes in MiB, since that is how people think of them; 0 or empty means no limit.

use protocol::validate::{self, Invalid};
use protocol::{AddRequest, Command, DownloadId, Settings, SettingsPatch};

/// The add form's fields, as typed.
#[derive(Debug, Default, Clone)]
pub struct AddForm {
    pub url: String,
    pub filename: String,
    pub threads: String,
    pub retries: String,
    pub speed_kib: String,
}

impl AddForm {
    pub fn to_request(&self) -> Result<AddRequest, String> {
        let url = self.url.trim();
        if url.is_empty() {
            return Err("enter an http:// or https:// address".into());
        }
        validate::url(url).map_err(shown)?;
        let filename = Some(self.filename.trim())
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let threads = optional_number(&self.threads, "connections")?
            .map(|t| validate::threads(saturate(t)))
            .transpose()
            .map_err(shown)?;
        let retries = optional_number(&self.retries, "retries")?
            .map(|r| validate::retries(saturate(r)))
            .transpose()
            .map_err(shown)?;
        let limit = optional_number(&self.speed_kib, "speed cap")?;
        Ok(AddRequest {
            url: url.to_owned(),
            filename,
            threads,
            retries,
            bandwidth_limit: limit.filter(|&l| l > 0).map(|l| l.saturating_mul(1024)),
            ..AddRequest::default()
        })
    }
}

/// A row's "More" menu, as typed: a new address, a speed cap and a connection count for that download.
#[derive(Debug, Default, Clone)]
pub struct RowForm {
    pub url: String,
    pub speed_kib: String,
    pub threads: String,
}

impl RowForm {
    /// `set_url` with the typed address; `restart`: start over there when it serves another file.
    pub fn set_url(&self, download_id: DownloadId, restart: bool) -> Result<Command, String> {
        let url = self.url.trim();
        if url.is_empty() {
            return Err("paste the new http:// or https:// address first".into());
        }
        validate::url(url).map_err(shown)?;
        Ok(Command::SetUrl {
            download_id,
            url: url.to_owned(),
            restart,
            headers: None,
            referrer: None,
        })
    }

    /// `update` with what was typed (empty fields stay as they are; a cap of 0 lifts the cap).
    pub fn update(&self, download_id: DownloadId) -> Result<Command, String> {
        let threads = optional_number(&self.threads, "connections")?
            .map(|t| validate::threads(saturate(t)))
            .transpose()
            .map_err(shown)?;
        let limit = optional_number(&self.speed_kib, "speed cap")?;
        if threads.is_none() && limit.is_none() {
            return Err("type a speed cap or a number of connections first".into());
        }
        Ok(Command::Update {
            download_id,
            bandwidth_limit: limit.map(|l| l.saturating_mul(1024)),
            threads,
        })
    }
}

/// The settings form's fields, as typed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SettingsForm {
    pub max_concurrent: String,
    pub speed_kib: String,
    pub download_dir: String,
    pub capture_enabled: bool,
    pub capture_min_mib: String,
    /// One host per line (commas and spaces also separate).
    pub capture_exclude: String,
}

impl SettingsForm {
    pub fn from_settings(s: &Settings) -> SettingsForm {
        SettingsForm {
            max_concurrent: s.max_concurrent.to_string(),
            speed_kib: (s.bandwidth_limit / 1024).to_string(),
            download_dir: s.download_dir.clone(),
            capture_enabled: s.capture_enabled,
            capture_min_mib: mib_text(s.capture_min_size),
            capture_exclude: s.capture_exclude.join("\n"),
        }
    }

    pub fn to_patch(&self) -> Result<SettingsPatch, String> {
        let max = required_number(&self.max_concurrent, "max concurrent")?;
        let max = validate::max_concurrent(saturate(max)).map_err(shown)?;
        let speed = optional_number(&self.speed_kib, "speed cap")?.unwrap_or(0);
        let min_size =
            parse_mib(&self.capture_min_mib).ok_or("minimum size must be a number of MiB")?;
        let exclude = self
            .capture_exclude
            .split(|c: char| c == ',' || c.is_whitespace())
            .map(|h| h.trim().trim_start_matches("*.").to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        Ok(SettingsPatch {
            max_concurrent: Some(max),
            bandwidth_limit: Some(speed.saturating_mul(1024)),
            download_dir: Some(self.download_dir.trim().to_owned()),
            capture_enabled: Some(self.capture_enabled),
            capture_min_size: Some(min_size),
            capture_exclude: Some(exclude),
            ..SettingsPatch::default()
        })
    }
}

const MIB: u64 = 1024 * 1024;

/// Bytes as MiB with up to two decimals, trailing zeros dropped: `1572864` → `"1.5"`. Integer arithmetic only, to keep
/// float formatting out of the wasm.
fn mib_text(bytes: u64) -> String {
    let hundredths = (u128::from(bytes) * 100 + u128::from(MIB) / 2) / u128::from(MIB);
    let (whole, frac) = (hundredths / 100, hundredths % 100);
    match frac {
        0 => whole.to_string(),
        f if f % 10 == 0 => format!("{whole}.{}", f / 10),
        f => format!("{whole}.{f:02}"),
    }
}

/// `"1.5"` MiB → bytes; empty is 0. At most two decimals (finer would be below a 10 KiB step anyway).
fn parse_mib(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let hundredths: u64 = format!("{frac:0<2}").parse().ok()?;
    whole.checked_mul(MIB)?.checked_add(hundredths * MIB / 100)
}

/// A typed number too large for a `u32` is out of every range, so the largest `u32` stands in for it.
fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The form shows a refusal as plain text.
fn shown(e: Invalid) -> String {
    e.0
}

fn optional_number(text: &str, what: &str) -> Result<Option<u64>, String> {
    match text.trim() {
        "" => Ok(None),
        s => s
            .parse()
            .map(Some)
            .map_err(|_| format!("{what} must be a whole number")),
    }
}

fn required_number(text: &str, what: &str) -> Result<u64, String> {
    optional_number(text, what)?.ok_or_else(|| format!("{what} is required"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_form_with_only_a_url_leaves_the_rest_to_the_host() {
        let form = AddForm {
            url: " https://h/f.iso ".into(),
            ..AddForm::default()
        };
        let req = form.to_request().unwrap();
        assert_eq!(req.url, "https://h/f.iso");
        assert_eq!(
            (req.filename, req.threads, req.retries, req.bandwidth_limit),
            (None, None, None, None)
        );
    }

    #[test]
    fn add_form_reads_every_field() {
        let form = AddForm {
            url: "http://h/x".into(),
            filename: "y.bin".into(),
            threads: "4".into(),
            retries: "3".into(),
            speed_kib: "100".into(),
        };
        let req = form.to_request().unwrap();
        assert_eq!(req.filename.as_deref(), Some("y.bin"));
        assert_eq!((req.threads, req.retries), (Some(4), Some(3)));
        assert_eq!(req.bandwidth_limit, Some(102_400));
    }

    #[test]
    fn add_form_refuses_bad_input() {
        let bad = |f: AddForm| f.to_request().unwrap_err();
        assert!(bad(AddForm::default()).contains("http"));
        assert!(
            bad(AddForm {
                url: "ftp://h/x".into(),
                ..AddForm::default()
            })
            .contains("http")
        );
        let url = || "http://h/x".to_string();
        assert!(
            bad(AddForm {
                url: url(),
                threads: "0".into(),
                ..AddForm::default()
            })
            .contains("between")
        );
        assert!(
            bad(AddForm {
                url: url(),
                threads: "99".into(),
                ..AddForm::default()
            })
            .contains("between")
        );
        assert!(
            bad(AddForm {
                url: url(),
                retries: "x".into(),
                ..AddForm::default()
            })
            .contains("whole")
        );
        assert!(
            bad(AddForm {
                url: url(),
                retries: "101".into(),
                ..AddForm::default()
            })
            .contains("at most")
        );
    }

    #[test]
    fn settings_round_trip_through_the_form() {
        let s = Settings {
            max_concurrent: 4,
            bandwidth_limit: 2048 * 1024,
            download_dir: "/tmp/d".into(),
            capture_enabled: false,
            capture_min_size: 3 * 1024 * 1024 / 2,
            capture_exclude: vec!["example.com".into(), "b.org".into()],
            ..Settings::default()
        };
        let form = SettingsForm::from_settings(&s);
        assert_eq!(form.capture_min_mib, "1.5");
        let p = form.to_patch().unwrap();
        assert_eq!(p.max_concurrent, Some(4));
        assert_eq!(p.bandwidth_limit, Some(2048 * 1024));
        assert_eq!(p.download_dir.as_deref(), Some("/tmp/d"));
        assert_eq!(p.capture_enabled, Some(false));
        assert_eq!(p.capture_min_size, Some(3 * 1024 * 1024 / 2));
        assert_eq!(p.capture_exclude, Some(s.capture_exclude.clone()));
        // Fields the form does not show are left alone.
        assert_eq!(p.default_threads, None);
    }

    #[test]
    fn excluded_sites_accept_commas_spaces_and_wildcards() {
        let form = SettingsForm {
            max_concurrent: "3".into(),
            capture_exclude: "A.com, *.b.org\n\n c.net".into(),
            ..SettingsForm::default()
        };
        let p = form.to_patch().unwrap();
        assert_eq!(
            p.capture_exclude.unwrap(),
            vec!["a.com".to_string(), "b.org".into(), "c.net".into()]
        );
    }

    #[test]
    fn mib_text_and_parse_mib_agree() {
        assert_eq!(mib_text(0), "0");
        assert_eq!(mib_text(MIB), "1");
        assert_eq!(mib_text(MIB * 3 / 2), "1.5");
        assert_eq!(mib_text(MIB / 4), "0.25");
        assert_eq!(parse_mib(""), Some(0));
        assert_eq!(parse_mib(" 2 "), Some(2 * MIB));
        assert_eq!(parse_mib("1.5"), Some(MIB * 3 / 2));
        assert_eq!(parse_mib(".25"), Some(MIB / 4));
        assert_eq!(parse_mib("1."), Some(MIB));
        for bad in ["x", "1.234", "-1", "1.-2", "1e3"] {
            assert_eq!(parse_mib(bad), None, "{bad}");
        }
    }

    #[test]
    fn settings_form_refuses_out_of_range_concurrency() {
        let form = SettingsForm {
            max_concurrent: "0".into(),
            ..SettingsForm::default()
        };
        assert!(form.to_patch().is_err());
        let form = SettingsForm {
            max_concurrent: "".into(),
            ..SettingsForm::default()
        };
        assert!(form.to_patch().unwrap_err().contains("required"));
    }

    #[test]
    fn row_form_reads_a_new_address_a_cap_and_connections() {
        let form = RowForm {
            url: " https://mirror.example/f.iso ".into(),
            speed_kib: "256".into(),
            threads: "4".into(),
        };
        assert_eq!(
            form.set_url(7, false).unwrap(),
            Command::SetUrl {
                download_id: 7,
                url: "https://mirror.example/f.iso".into(),
                restart: false,
                headers: None,
                referrer: None,
            }
        );
        assert_eq!(
            form.update(7).unwrap(),
            Command::Update {
                download_id: 7,
                bandwidth_limit: Some(256 * 1024),
                threads: Some(4),
            }
        );
        let lift = RowForm {
            speed_kib: "0".into(),
            ..RowForm::default()
        };
        assert_eq!(
            lift.update(7).unwrap(),
            Command::Update {
                download_id: 7,
                bandwidth_limit: Some(0),
                threads: None,
            }
        );
    }

    #[test]
    fn row_form_refuses_bad_input() {
        let empty = RowForm::default();
        assert!(empty.set_url(1, false).is_err());
        assert!(empty.update(1).is_err());
        for (url, speed, threads) in [
            ("ftp://h/f", "", ""),
            ("", "fast", ""),
            ("", "", "0"),
            ("", "", "33"),
        ] {
            let form = RowForm {
                url: url.into(),
                speed_kib: speed.into(),
                threads: threads.into(),
            };
            let refused = if url.is_empty() {
                form.update(1).is_err()
            } else {
                form.set_url(1, false).is_err()
            };
            assert!(refused, "{form:?}");
        }
    }
}
